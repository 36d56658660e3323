"""The progress bar of a scenario replay (scenario_replay.py): one bar, named after the phase under way."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class ReplayProgress:
    def __init__(self, total: int, enabled: bool, console: Console | None) -> None:
        self.bar: Progress | None = None
        if enabled:
            self.bar = Progress(
                TextColumn("[bold]{task.description:<12}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            )
            self.task = self.bar.add_task("scenario", total=total)

    def __enter__(self) -> ReplayProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def phase(self, name: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=name)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)
