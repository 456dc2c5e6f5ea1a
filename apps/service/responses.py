"""The one shape of every error the service answers: ``{"error": "...", "field": "..."}``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.responses import JSONResponse


def error(
    status: int,
    message: str,
    field: str | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON error response; ``extra`` adds keys beside ``error`` and ``field`` (e.g. ``status``)."""
    body: dict[str, Any] = {"error": message, "field": field, **(extra or {})}
    return JSONResponse(body, status_code=status, headers=headers)


# where in the request a validation error was found: not part of the field's name
LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})


def invalid_field(errors: Sequence[Any]) -> tuple[str, str]:
    """The field and the one-line message of a 422 for pydantic's ``errors()`` (the first one):
    ``("url", "url: String should ...")``. One wording for ``POST /jobs`` and each job of a batch."""
    first = errors[0] if errors else {}
    loc = list(first.get("loc", ()))
    if loc and loc[0] in LOCATIONS:
        loc = loc[1:]
    field = "body" if first.get("type") == "json_invalid" else (".".join(map(str, loc)) or "body")
    return field, f"{field}: {first.get('msg', 'invalid')}"
