"""Progress lines for long loops: `masks: 120/300 (40%), 3.2 images/s, ETA 56s`.

Every step that can run longer than a few seconds (class-image generation, training steps,
masks, regset downloads and filtering, edits) reports through `Progress`, which logs to the
`lcd.progress` logger: a line when the loop starts, after the first item (the first rate and
ETA), then at most one line every `every_s` seconds, and a closing line with the count, the
time and the rate. Lines, not terminal bars: they read the same in a terminal, a CI log, a
Prefect flow-run log (tasks forward the `lcd` loggers) and `dvc repro`'s output.

The library only logs; whoever runs it decides where lines go (`lcd.cli` prints them to stderr,
`tasks` forward them to the run logger). With no handler configured nothing is printed, as a
library should behave in a notebook until asked.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

LOG = logging.getLogger("lcd.progress")


def format_duration(seconds: float) -> str:
    """12.3 -> '12s', 185 -> '3m05s', 3725 -> '1h02m' (whole seconds, never negative)."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _rate(per_s: float) -> str:
    """3 significant digits, without exponents: 0.357, 2.5, 1150."""
    return f"{per_s:.0f}" if per_s >= 100 else f"{per_s:.3g}"


def progress_line(label: str, done: int, total: int | None, elapsed_s: float, unit: str = "items") -> str:
    """The line for `done` of `total` after `elapsed_s` seconds.

    -> 'label: 3/10 (30%), 1.50 items/s, ETA 5s'; without a total: 'label: 3 items, 1.50 items/s';
    before any rate can be given: 'label: 0/10 items'.
    """
    count = f"{done}/{total}" if total is not None else f"{done}"
    head = f"{label}: {count}" + (f" ({100 * done // total}%)" if total else "") + ("" if total else f" {unit}")
    if done <= 0 or elapsed_s <= 0:
        return f"{label}: {count} {unit}" if total is not None else head
    rate = done / elapsed_s
    line = f"{head}, {_rate(rate)} {unit}/s" if rate >= 1 else f"{head}, {elapsed_s / done:.3g} s/{unit.rstrip('s') or unit}"
    if total is not None and done < total:
        line += f", ETA {format_duration((total - done) / rate)}"
    return line


class Progress:
    """Counts items of one loop and logs progress lines (see the module docstring).

    `total` may be None (a stream of unknown length). `every_s` bounds how often a line is
    logged; `clock` is injectable so tests need no sleeps. Use as a context manager, or call
    `close()`: the closing line says how many items were done, in how long.
    """

    def __init__(self, label: str, total: int | None, *, unit: str = "items", every_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger = LOG):
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.clock, self.logger = clock, logger
        self.done = 0
        self.start = clock()
        self._last = self.start
        self._closed = False
        if total != 0:
            self.logger.info(progress_line(label, 0, total, 0.0, unit))

    def advance(self, n: int = 1, detail: str = "") -> None:
        """`n` more items finished; logs a line after the first item and then every `every_s`
        (`detail`, e.g. 'loss 0.1234', is appended to the line)."""
        first = self.done == 0
        self.done += n
        now = self.clock()
        if first or now - self._last >= self.every_s:
            self._last = now
            line = progress_line(self.label, self.done, self.total, now - self.start, self.unit)
            self.logger.info(line + (f", {detail}" if detail else ""))

    def close(self, note: str = "") -> None:
        """Log the closing line once: 'label: done, 10 items in 4s (2.5 items/s)[; note]'."""
        if self._closed:
            return
        self._closed = True
        elapsed = self.clock() - self.start
        rate = f" ({_rate(self.done / elapsed)} {self.unit}/s)" if self.done and elapsed > 0 else ""
        self.logger.info(f"{self.label}: done, {self.done} {self.unit} in {format_duration(elapsed)}{rate}"
                         + (f"; {note}" if note else ""))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
