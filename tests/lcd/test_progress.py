"""Progress lines: format, when they are logged (start, first item, every N seconds, close)."""

import logging

import pytest

from lcd.progress import Progress, format_duration, progress_line


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.mark.parametrize("s, text", [(0, "0s"), (12.4, "12s"), (185, "3m05s"), (3725, "1h02m"), (-3, "0s")])
def test_format_duration(s, text):
    assert format_duration(s) == text


def test_progress_line_gives_count_percent_rate_and_eta():
    assert progress_line("masks", 0, 10, 0.0, "images") == "masks: 0/10 images"
    assert progress_line("masks", 3, 10, 2.0, "images") == "masks: 3/10 (30%), 1.5 images/s, ETA 5s"
    # slow items read as seconds per item, and the ETA is for the items left
    assert progress_line("train", 2, 600, 20.0, "steps") == "train: 2/600 (0%), 10 s/step, ETA 1h39m"
    assert progress_line("x", 10, 10, 4.0) == "x: 10/10 (100%), 2.5 items/s"  # no ETA when done
    assert progress_line("stream", 5, None, 2.0, "urls") == "stream: 5 urls, 2.5 urls/s"


def test_progress_logs_start_first_item_every_interval_and_close(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="lcd.progress")
    with Progress("edit", 5, every_s=10, clock=clock) as p:
        clock.t += 2
        p.advance()          # first item: logged (the first rate and ETA)
        clock.t += 2
        p.advance()          # 2 s after the last line: quiet
        clock.t += 9
        p.advance(2, "loss 0.5")  # 11 s after the last line: logged, with the detail
        clock.t += 1
        p.advance()
    lines = [r.getMessage() for r in caplog.records if r.name == "lcd.progress"]
    assert lines == [
        "edit: 0/5 items",
        "edit: 1/5 (20%), 2 s/item, ETA 8s",
        "edit: 4/5 (80%), 3.25 s/item, ETA 3s, loss 0.5",
        "edit: done, 5 items in 14s (0.357 items/s)",
    ]
    p.close("again")  # the closing line is logged once
    assert len([r for r in caplog.records if r.name == "lcd.progress"]) == 4


def test_cli_prints_progress_lines_on_stderr(tmp_path, capsys):
    """`lcd` shows the library's progress lines on stderr (stdout stays the command's result)."""
    from lcd.cli import show_progress

    show_progress()
    show_progress()  # idempotent: one handler, one copy of each line
    Progress("walk", 2).close()
    err = capsys.readouterr().err
    assert err.count("walk: 0/2 items") == 1 and "walk: done, 0 items in 0s" in err
