"""The command line and settings: clear one-line errors, the documented defaults, and a submit
that rides out a full queue instead of dropping work."""

from __future__ import annotations

import re
import subprocess

import click
import httpx
import pytest
from click.testing import CliRunner

from apps.cli.common import EXIT_UNAVAILABLE
from apps.cli.main import main
from apps.cli.run_commands import service_routes
from apps.harness.redis_launcher import free_port
from pipeline.errors import SettingsError
from pipeline.settings import Settings
from tests.support.helpers import CLI, Processes, allow, child_env, get_json, wait_until


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
@pytest.mark.slow  # starts the real CLI as a process
def test_processes_refuse_a_bad_setting_with_exit_2(command: str) -> None:
    """serve and worker exit 2 at start-up with the one-line error on stderr."""
    done = run(command, WORKERS="lots")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "queue-contrast: invalid WORKERS='lots': Input should be a valid integer, unable to parse "
        "string as an integer"
    ]


@pytest.mark.slow  # starts the real CLI as a process
def test_worker_with_inmemory_backend_explains_itself() -> None:
    """`worker` under QUEUE_BACKEND=inmemory exits 2 saying the queue lives inside serve."""
    done = run("worker", QUEUE_BACKEND="inmemory")
    assert done.returncode == 2
    assert "inside `queue-contrast serve`" in done.stderr


@pytest.mark.parametrize(
    "command",
    [
        "serve",
        "worker",
        "submit",
        "status",
        "result",
        "cancel",
        "jobs",
        "upstream",
        "crash-demo",
        "dead-letters",
    ],
)
@pytest.mark.slow  # starts the real CLI as a process
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


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
    return found


def test_every_option_of_every_command_has_help() -> None:
    """Every option of every command (and sub-command) says what it does in --help."""
    missing = [
        f"{name} {'/'.join(param.opts)}"
        for name, command in [("", main), *_commands(main)]
        for param in command.params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert missing == []
    assert {name for name, _ in _commands(main)} >= {
        "serve",
        "submit",
        "status",
        "result",
        "cancel",
        "jobs",
        "dead-letters list",
        "dead-letters purge",
    }


def test_serve_help_lists_every_route_of_the_service() -> None:
    """`serve --help` names each route the service app really has, and what serve runs."""
    shown = CliRunner().invoke(main, ["serve", "--help"], terminal_width=100).output
    paths = [path for _, path in service_routes()]
    assert "/jobs/{job_id}" in paths and "/dead-letters" in paths
    for path in paths:
        assert re.search(rf"\s{re.escape(path)}\n", shown), path
    assert "only enqueues into Redis" in shown and "workers=none" in shown


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "http://example.com/x"],
        ["submit", "--wait", "http://example.com/x"],
        ["submit", "--method", "POST", "--json", '{"a": 1}', "http://example.com/x"],
        ["status", "some-id"],
        ["result", "some-id"],
        ["cancel", "some-id"],
        ["jobs"],
        ["dead-letters", "list"],
        ["dead-letters", "retry", "--all"],
        ["dead-letters", "retry", "some-id"],
        ["dead-letters", "purge", "--yes"],
    ],
    ids=lambda a: " ".join(a[:3]),
)
@pytest.mark.slow  # starts the real CLI as a process
def test_client_commands_without_a_service_say_so_in_one_line(args: list[str]) -> None:
    """With nothing listening at --api, each client command prints one line and exits 3."""
    api = f"http://127.0.0.1:{free_port()}"  # bound and released: nothing listens there
    done = run(*args, "--api", api)
    assert done.returncode == EXIT_UNAVAILABLE, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"queue-contrast: cannot reach the service at {api}"), line


def test_submit_wait_prints_why_a_job_failed(processes: Processes, upstream: str) -> None:
    """`submit --wait` prints one line per job as it ends (id, status, HTTP status, attempts;
    a failed job's error) and exits 1 when one failed."""
    _, api = processes.serve(QUEUE_BACKEND="inmemory", MAX_TRIES=1, ALLOWED_HOSTS=allow(upstream))
    ok, gone = f"{upstream}/fine", f"{upstream}/gone?status=404"
    done = run("submit", "--api", api, "--wait", "--timeout", "60", ok, gone)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, lines
    assert any(re.fullmatch(rf"\w+ done http=200 attempts=1 {re.escape(ok)}", li) for li in lines)
    failed = rf"\w+ failed http=404 attempts=1 error='HTTP 404' {re.escape(gone)}"
    assert any(re.fullmatch(failed, line) for line in lines), lines


def test_dead_letters_list_sends_api_token(processes: Processes, upstream: str) -> None:
    """With API_TOKEN set, `dead-letters list` sends it and works; without it the service's 401
    comes back as one line and exit 1."""
    env = {"QUEUE_BACKEND": "inmemory", "MAX_TRIES": 1, "API_TOKEN": "t0k3n"}
    _, api = processes.serve(**env, ALLOWED_HOSTS=allow(upstream))
    headers = {"Authorization": "Bearer t0k3n"}
    r = httpx.post(
        api + "/jobs", json={"url": upstream + "/g?status=404", "id": "dl"}, headers=headers
    )
    assert r.status_code == 202, r.text
    wait_until(
        lambda: (
            httpx.get(api + "/stats", headers=headers, trust_env=False).json()["dead_letters"] == 1
        ),
        30,
        "one dead letter",
    )
    listed = run("dead-letters", "list", "--api", api, API_TOKEN="t0k3n")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("dl attempts=1 error='HTTP 404' ")
    refused = run("dead-letters", "list", "--api", api)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "queue-contrast: 401 missing or invalid bearer token"
    ]
