"""What every section's view shares: a table, a check, a section, and number formatting."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Table = tuple[str, list[str], list[list[str]], list[str]]  # title, headers, rows, notes
#: check(name, value, target, op=">=", note="") records one target and whether this run met it
Check = Callable[..., None]


@dataclass(frozen=True)
class Section:
    """One benchmark section as the report shows it: its key in the results, its title, its
    targets (None: it has none) and its tables."""

    key: str
    title: str
    checks: Callable[[dict[str, Any], Check], None] | None
    tables: Callable[[dict[str, Any]], list[Table]]


def fmt(x: float | None, digits: int = 0) -> str:
    """A number with thousands separators, or a dash for what was not measured."""
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0
