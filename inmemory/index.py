"""Cursor pagination over an append-only sequence: the job listing and the dead letters.

Every item gets the next number of a monotonic sequence when it is added, so a walk that resumes
after the last number it saw visits each item once, and items added during the walk (always with
higher numbers) are met in their turn. The cursor is that number as an opaque string. Removed items
leave a tombstone that the next compaction drops, so a removal costs O(1) amortized.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Generic, Literal, TypeVar

from pipeline.errors import InvalidJob

T = TypeVar("T")
Order = Literal["oldest", "newest"]
MAX_CURSOR_DIGITS = 19


def parse_cursor(cursor: str | None) -> int | None:
    """The sequence number in ``cursor``; InvalidJob("cursor") when it is not one of ours."""
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= MAX_CURSOR_DIGITS):
        raise InvalidJob("cursor", "not a cursor this listing gave out (use next_cursor as is)")
    return int(cursor)


class SeqIndex(Generic[T]):
    """Items in the order they were added, each under its sequence number."""

    def __init__(self) -> None:
        self._numbers: list[int] = []  # ascending; may hold numbers of removed items
        self._items: dict[int, T] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> int:
        number = self._next
        self._next += 1
        self._numbers.append(number)
        self._items[number] = item
        return number

    def get(self, number: int) -> T | None:
        return self._items.get(number)

    def remove(self, number: int) -> None:
        if self._items.pop(number, None) is not None and len(self._numbers) > 2 * len(self._items):
            self._numbers = [n for n in self._numbers if n in self._items]

    def values(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def page(
        self,
        limit: int,
        cursor: str | None = None,
        order: Order = "oldest",
        keep: Callable[[T], bool] | None = None,
    ) -> tuple[list[T], str | None]:
        """Up to ``limit`` items after ``cursor`` (in ``order``) that ``keep`` accepts, and the
        cursor of the next page (None when no item is left after this page)."""
        after = parse_cursor(cursor)
        numbers = self._numbers
        if order == "oldest":
            start = 0 if after is None else bisect.bisect_right(numbers, after)
            walk = range(start, len(numbers))
        else:
            stop = len(numbers) if after is None else bisect.bisect_left(numbers, after)
            walk = range(stop - 1, -1, -1)
        found: list[tuple[int, T]] = []
        for i in walk:
            number = numbers[i]
            item = self._items.get(number)
            if item is None or (keep is not None and not keep(item)):
                continue
            if len(found) == limit:
                return [i for _, i in found], str(found[-1][0])
            found.append((number, item))
        return [i for _, i in found], None
