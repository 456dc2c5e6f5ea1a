"""The scripts of ``durable/lua`` read alike: each names its KEYS and ARGV positions once, in its
header (before its first ``--!include``), takes Redis's clock from ``lib/time.lua`` alone, and
keeps its ``#!lua`` flags line first."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from durable.scripts import NAMES

LUA = resources.files("durable").joinpath("lua")
FIXED_POSITION = re.compile(r"\b(KEYS|ARGV)\[\d")


def text(path: str) -> str:
    return LUA.joinpath(path).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", NAMES)
def test_keys_and_argv_positions_are_named_only_in_the_header(name: str) -> None:
    """No KEYS[n] or ARGV[n] with a literal n after the script's first --!include line."""
    script = text(f"{name}.lua")
    assert script.startswith("#!lua"), "the #!lua flags line must stay first"
    body = script[script.index("\n--!include ") :]
    assert not FIXED_POSITION.findall(body), f"{name}.lua: KEYS/ARGV by number below its header"


def test_only_lib_time_reads_redis_time() -> None:
    """Every script gets now from lib/time.lua's now_ms(); no other file calls TIME."""
    files = [f"{n}.lua" for n in NAMES] + [
        f"lib/{p.name}" for p in LUA.joinpath("lib").iterdir() if p.name.endswith(".lua")
    ]
    calling = [f for f in files if "redis.call('TIME')" in text(f)]
    assert calling == ["lib/time.lua"]
    for name in NAMES:
        if "now_ms()" in text(f"{name}.lua"):
            assert "--!include lib/time.lua" in text(f"{name}.lua"), name


def test_libs_read_no_fixed_keys_or_argv() -> None:
    """A lib uses the including script's K table (and arguments it is passed), never KEYS[n]."""
    for p in LUA.joinpath("lib").iterdir():
        if p.name.endswith(".lua"):
            assert not FIXED_POSITION.findall(p.read_text(encoding="utf-8")), p.name
