"""Prefect tasks: thin wrappers that resolve paths, call lcd, save, and return a small summary.

One task handles a shard of items, never a single image (a task per image does not scale).

Importing this package forwards lcd's progress and summary lines (the `lcd` loggers, INFO) to
Prefect: the handlers Prefect gives its "extra loggers" (console + API, so lines logged inside a
task land in that run's logs in the UI and in `prefect deployment run --watch`). The same as
setting PREFECT_LOGGING_EXTRA_LOGGERS=lcd, without depending on the environment a worker was
started with.
"""

from __future__ import annotations

import logging


class _ToPrefect(logging.Handler):
    """Hands `lcd` records to Prefect's extra-logger handlers, only inside a flow or task run
    (outside one, as when a bench or a notebook calls lcd in this process, Prefect's API handler
    would warn on every line)."""

    def emit(self, record: logging.LogRecord) -> None:
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        for handler in logging.getLogger("prefect.extra").handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def forward_lcd_logs() -> None:
    """Give the `lcd` logger a forwarder to Prefect's extra-logger handlers (once), level INFO."""
    import prefect  # noqa: F401 - sets up Prefect's logging config, the `prefect.extra` handlers included

    lcd_log = logging.getLogger("lcd")
    if not any(isinstance(h, _ToPrefect) for h in lcd_log.handlers):
        lcd_log.addHandler(_ToPrefect())
    lcd_log.setLevel(logging.INFO)


forward_lcd_logs()
