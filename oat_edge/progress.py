"""One progress bar for every long loop of the command line (rich, transient: it disappears
when the loop ends, so logs and tables stay clean)."""

from __future__ import annotations

from typing import Iterator, Sequence, TypeVar

T = TypeVar("T")


def progress(items: Sequence[T], enabled: bool, label: str) -> Iterator[T]:
    """Yield ``items``, showing a bar labelled ``label`` when ``enabled``."""
    if not enabled:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task(label, total=len(items))
        for x in items:
            yield x
            bar.advance(task)
