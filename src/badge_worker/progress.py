"""Progress of the CLI's long commands: a rich progress bar on a terminal, nothing in a pipe
(where the command's own summary line is what a script reads)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

Report = Callable[[int, int], None]  # (done, total)


@contextlib.contextmanager
def progress(description: str, stream: TextIO | None = None, *, force_terminal: bool | None = None
             ) -> Iterator[Report]:
    """A callback to report (done, total) to; a no-op unless `stream` (stderr) is a terminal."""
    out = stream or sys.stderr
    terminal = out.isatty() if force_terminal is None else force_terminal
    if not terminal:
        yield lambda _done, _total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=out, force_terminal=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task(description, total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield report
