"""Progress display on stderr (rich), quiet when stderr is not a terminal."""

from __future__ import annotations

import sys
import threading
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

stderr = Console(stderr=True, highlight=False)


class DownloadProgress:
    """A `kernel.Progress` callback that draws one bar per package."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            transient=False,
            disable=not sys.stderr.isatty(),
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()
        self._announced: set[str] = set()

    def __call__(self, label: str, done: int, total: int) -> None:
        with self._lock:
            if not sys.stderr.isatty():
                # No bars in logs: one line per item when it starts.
                if label not in self._announced:
                    self._announced.add(label)
                    size = f" ({total / 1e6:.1f} MB)" if total else ""
                    stderr.print(f"kitl: {label}{size}")
                return
            task = self._tasks.get(label)
            if task is None:
                task = self._progress.add_task(label, total=total or None)
                self._tasks[label] = task
            self._progress.update(task, completed=done, total=total or None)

    def __enter__(self) -> DownloadProgress:
        self._progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)
