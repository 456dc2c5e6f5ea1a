"""The one shape of every error the service answers: ``{"error": "...", "field": "..."}``."""

from __future__ import annotations

from collections.abc import Mapping
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
