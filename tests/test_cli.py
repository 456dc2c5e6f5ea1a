"""The command line and settings: clear one-line errors, the documented defaults, and a submit
that rides out a full queue instead of dropping work."""

from __future__ import annotations

import re
import subprocess

import httpx
import pytest

from pipeline.errors import SettingsError
from pipeline.settings import Settings
from tests.helpers import CLI, Processes, allow, child_env, get_json


def run(*args: str, **env: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_defaults_match_the_design() -> None:
    """With no environment, the settings are DESIGN.md's defaults."""
    s = Settings.from_env({})
    assert (s.queue_backend, s.redis_url, s.workers, s.queue_maxsize, s.host, s.port) == (
        "inmemory",
        "redis://localhost:6379/0",
        3,
        10,
        "127.0.0.1",
        8000,
    )


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("WORKERS", "many", "valid integer"),
        ("QUEUE_BACKEND", "kafka", "'inmemory' or 'durable'"),
        ("QUEUE_MAXSIZE", "0", "greater than or equal to 1"),
        ("REDIS_URL", "http://x", "redis://"),
        ("JOB_TIMEOUT", "-1", "greater than 0"),
    ],
)
def test_invalid_value_is_one_line_naming_the_variable(name: str, value: str, says: str) -> None:
    """A bad value raises SettingsError with one line naming the variable and what it accepts."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    message = str(info.value)
    assert "\n" not in message and f"{name}={value!r}" in message and says in message


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_processes_refuse_a_bad_setting_with_exit_2(command: str) -> None:
    """serve and worker exit 2 at start-up with the one-line error on stderr."""
    done = run(command, WORKERS="lots")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "queue-contrast: invalid WORKERS='lots': Input should be a valid integer, unable to parse "
        "string as an integer"
    ]


def test_worker_with_inmemory_backend_explains_itself() -> None:
    """`worker` under QUEUE_BACKEND=inmemory exits 2 saying the queue lives inside serve."""
    done = run("worker", QUEUE_BACKEND="inmemory")
    assert done.returncode == 2
    assert "inside `queue-contrast serve`" in done.stderr


@pytest.mark.parametrize(
    "command", ["serve", "worker", "submit", "upstream", "crash-demo", "dead-letters"]
)
def test_every_command_has_help(command: str) -> None:
    """Each subcommand's --help exits 0 and says what it does."""
    done = run(command, "--help")
    assert done.returncode == 0
    assert "Usage:" in done.stdout and len(done.stdout.splitlines()) > 4


def test_submit_rides_out_503s_and_loses_nothing(processes: Processes, upstream: str) -> None:
    """submit against a queue of 1 gets 503s, waits as told, and every URL ends done."""
    _, api = processes.serve(
        QUEUE_BACKEND="inmemory",
        WORKERS=1,
        QUEUE_MAXSIZE=1,
        SUBMIT_TIMEOUT=0.1,
        ALLOWED_HOSTS=allow(upstream),
    )
    urls = [f"{upstream}/s/{i}?latency_ms=200" for i in range(6)]
    done = run("submit", "--api", api, "--wait", "--timeout", "60", *urls)
    assert done.returncode == 0, done.stderr
    assert len([line for line in done.stdout.splitlines() if " done " in line]) == 6
    assert get_json(upstream + "/stats")["unique_jobs"] == 6
    metrics = httpx.get(api + "/metrics", timeout=10, trust_env=False).text
    rejected = re.search(r'qc_submit_rejected_total\{backend="inmemory"\} (\S+)', metrics)
    assert rejected and float(rejected.group(1)) > 0, "the queue never pushed back"
