"""A small terminal progress bar (count, rate, ETA) that stays silent when its stream is not a terminal.

Examples:

```python
>>> import io
>>> bar = ProgressBar(total=10, unit="seq", stream=io.StringIO())  # not a terminal: draws nothing
>>> bar.update(4, work=400); bar.close()
>>> bar.done, bar.work_done
(4, 400)
```
"""

from __future__ import annotations

import sys
import time

_BAR_WIDTH = 24
_REDRAW_SECONDS = 0.1


def format_duration(seconds):
    """`75` -> `'1:15'`, `3725` -> `'1:02:05'`."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class ProgressBar:
    """`[#####.....] 40/100 seq  1.2k res/s  ETA 0:52` on one self-overwriting line of `stream`.

    The ETA comes from the `work` rate (e.g. residues, which predict run time better than sequence counts) when a
    `total_work` is given, else from the item rate.

    Args:
        total: number of items (e.g. sequences) to process.
        unit: the items' unit shown after the count.
        total_work: optional total of a finer work measure (e.g. residues) used for the rate and ETA.
        work_unit: the work measure's unit (shown in the rate).
        stream: where to draw (default `sys.stderr`).
        enabled: draw or not; `None` draws only when `stream` is a terminal.
    """

    def __init__(self, total, unit="item", total_work=None, work_unit="res", stream=None, enabled=None):
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.total, self.unit = int(total), unit
        self.total_work, self.work_unit = total_work, work_unit
        self.done = self.work_done = 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def update(self, items=1, work=0):
        """Add `items` finished items and `work` units of work, and redraw (at most 10 times a second)."""
        self.done += items
        self.work_done += work
        now = time.monotonic()
        if self.enabled and (now - self._last_draw >= _REDRAW_SECONDS or self.done >= self.total):
            self._last_draw = now
            self._draw(now)

    def _draw(self, now):
        elapsed = max(now - self._start, 1e-9)
        fraction = self.done / self.total if self.total else 1.0
        filled = int(round(_BAR_WIDTH * min(fraction, 1.0)))
        parts = [f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {self.done}/{self.total} {self.unit}"]
        if self.total_work:
            parts.append(f"{_human(self.work_done / elapsed)} {self.work_unit}/s")
            remaining = (self.total_work - self.work_done) / (self.work_done / elapsed) if self.work_done else None
        else:
            parts.append(f"{_human(self.done / elapsed)} {self.unit}/s")
            remaining = (self.total - self.done) / (self.done / elapsed) if self.done else None
        parts.append(f"ETA {format_duration(remaining)}" if remaining is not None else "ETA --:--")
        self.stream.write("\r" + "  ".join(parts) + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self):
        """Finish the line (if anything was drawn)."""
        if self._drawn:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _human(value):
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= threshold:
            return f"{value / threshold:.1f}{suffix}"
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"
