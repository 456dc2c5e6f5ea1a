"""The Lua scripts of a job's life (``durable/lua/*.lua``), loaded once per process.

Each file is one transition and opens with its KEYS/ARGV layout; shared Lua lives in
``durable/lua/lib/`` and is pulled in by ``--!include lib/<name>.lua`` lines. Constants shared with
Python (``@RUNNING_SCORE@``, ``@PRIORITY_SPAN@`` from ``durable.keys``, ``@MAX_PRIORITY@`` and
``@DEFAULT_PERIOD_MS@`` from ``pipeline.jobs``) are filled in at load time.

Scripts start with a ``#!lua`` line (Redis 7): a script without the ``allow-oom`` flag is then
refused as a whole when Redis is out of memory, instead of failing half-way at its first write.
A server that does not read that line (Redis 6, or the embedded fakeredis stand-in) gets the same
script without it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from durable import keys
from pipeline.jobs import MAX_PRIORITY, FlowLimit

NAMES = (
    "enqueue",
    "enqueue_batch",
    "claim",
    "finish",
    "release",
    "heartbeat",
    "cancel",
    "flow_admin",
    "outcome",
)
INCLUDE = re.compile(r"^--!include (lib/[a-z_]+\.lua)$", re.MULTILINE)
CONSTANTS = {
    "@RUNNING_SCORE@": str(keys.RUNNING_SCORE),
    "@PRIORITY_SPAN@": str(keys.PRIORITY_SPAN),
    "@MAX_PRIORITY@": str(MAX_PRIORITY),  # the lowest priority (0 runs first)
    "@DEFAULT_PERIOD_MS@": str(round(FlowLimit().period_s * 1000)),  # a rate limit's own default
}


def source(name: str, overrides: Mapping[str, str] | None = None) -> str:
    """The full text of script ``name``: includes inlined, constants filled in. ``overrides``
    replaces a file's text (``name`` or ``lib/x.lua``): the tests load broken copies this way."""
    overrides = overrides or {}
    lua = resources.files(__package__ or "durable").joinpath("lua")

    def read(path: str) -> str:
        key = path.removesuffix(".lua") if "/" not in path else path
        if key in overrides:
            return overrides[key]
        return lua.joinpath(path).read_text(encoding="utf-8")

    text = INCLUDE.sub(lambda m: read(m.group(1)).rstrip("\n"), read(f"{name}.lua"))
    for token, value in CONSTANTS.items():
        text = text.replace(token, value)
    return text


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _without_shebang(text: str) -> str:
    return text.split("\n", 1)[1] if text.startswith("#!") else text


class Script:
    """One script, called by its sha; loaded again when Redis has forgotten it (a restart)."""

    def __init__(self, redis: Redis, name: str, text: str) -> None:
        self.redis = redis
        self.name = name
        self.text = text
        self.sha = _sha(text)

    def drop_flags(self) -> None:
        """For a server that does not read ``#!lua`` lines."""
        self.text = _without_shebang(self.text)
        self.sha = _sha(self.text)

    async def load(self) -> None:
        await self.redis.script_load(self.text)

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load()
            return await self.redis.evalsha(self.sha, len(keys), *keys, *args)


class Scripts:
    """Every script of the state machine, for one Redis client."""

    def __init__(self, redis: Redis, overrides: Mapping[str, str] | None = None) -> None:
        self.redis = redis
        self.by_name = {name: Script(redis, name, source(name, overrides)) for name in NAMES}

    async def load(self) -> None:
        """Load every script (at start-up: a script error shows here, not mid-job), without their
        ``#!lua`` lines where the server does not read them (checked with a probe)."""
        try:
            await self.redis.eval("#!lua\nreturn 1", 0)
        except ResponseError as exc:
            if "near '#'" not in str(exc):
                raise
            for script in self.by_name.values():
                script.drop_flags()
        for script in self.by_name.values():
            await script.load()

    def __getitem__(self, name: str) -> Script:
        return self.by_name[name]
