"""The command line's progress bar (count, rate, ETA), drawn with `rich` and silent when its stream is not a terminal.

`rich` comes with Keras, so this costs no dependency. The wrapper only fixes what the subcommands show: items done
out of the total, the rate of a finer work measure (residues predict run time better than sequence counts), and the
ETA from that rate.

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


def format_duration(seconds):
    """`75` -> `'1:15'`, `3725` -> `'1:02:05'`."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _human(value):
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= threshold:
            return f"{value / threshold:.1f}{suffix}"
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _columns(unit, work_unit):
    from rich.progress import BarColumn, ProgressColumn
    from rich.text import Text

    class Count(ProgressColumn):
        def render(self, task):
            return Text(f"{task.fields['items']}/{task.fields['total_items']} {unit}")

    class Rate(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text("--" if speed is None else f"{_human(speed)} {work_unit}/s")

    class Remaining(ProgressColumn):
        max_refresh = 0.5  # a steadier ETA than rich's per-frame estimate

        def render(self, task):
            if task.finished:
                return Text("ETA 0:00")
            remaining = task.time_remaining
            return Text("ETA --:--" if remaining is None else f"ETA {format_duration(remaining)}")

    return (BarColumn(bar_width=24), Count(), Rate(), Remaining())


class ProgressBar:
    """`━━━━━━━━━━╸━━━━━━━━━ 40/100 seq  1.2k res/s  ETA 0:52` on one self-overwriting line of `stream`.

    Args:
        total: number of items (e.g. sequences) to process.
        unit: the items' unit shown after the count.
        total_work: optional total of a finer work measure (e.g. residues) used for the rate and ETA; without it
            the items are the work.
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
        self.total_work = total_work
        self._count_work = total_work is not None
        self.done = self.work_done = 0
        self._progress = self._task = None
        if enabled:
            from rich.console import Console
            from rich.progress import Progress

            console = Console(file=self.stream, force_terminal=True, highlight=False)
            self._progress = Progress(*_columns(unit, work_unit if self._count_work else unit), console=console,
                                      transient=False, refresh_per_second=10)
            self._task = self._progress.add_task("", total=total_work if self._count_work else self.total,
                                                 items=0, total_items=self.total)
            self._progress.start()

    def update(self, items=1, work=0):
        """Add `items` finished items and `work` units of work."""
        self.done += items
        self.work_done += work
        if self._progress is not None:
            self._progress.update(self._task, advance=work if self._count_work else items, items=self.done)

    def close(self):
        """Draw the final state and finish the line (if anything was drawn)."""
        if self._progress is not None:
            self._progress.refresh()
            self._progress.stop()
            self._progress = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
