"""Progress bars for every long loop of the command line (rich). ``progress`` wraps a sequence
in a transient bar (it disappears when the loop ends, so logs and tables stay clean);
``progress_bar`` is the bar itself, for loops that count or relabel it by hand."""

from __future__ import annotations

from typing import Iterator, Sequence, TypeVar

T = TypeVar("T")


def progress_bar(enabled: bool, label: str = "", *, stats: bool = False, transient: bool = True, console=None):
    """A rich ``Progress`` (a context manager; does nothing when not ``enabled``) with one
    layout: ``label``, the task's description, bar, done/total, the task's ``stats`` field
    when ``stats``, elapsed and remaining time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn(label + "{task.description}"), BarColumn(), MofNCompleteColumn()]
    if stats:
        columns.append(TextColumn("{task.fields[stats]}"))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=console, disable=not enabled, transient=transient)


def progress(items: Sequence[T], enabled: bool, label: str) -> Iterator[T]:
    """Yield ``items``, showing a bar labelled ``label`` when ``enabled``."""
    if not enabled:
        yield from items
        return
    with progress_bar(True) as bar:
        task = bar.add_task(label, total=len(items))
        for x in items:
            yield x
            bar.advance(task)
