"""The client commands against a real `serve` and the upstream witness: what `submit` sends
arrives intact (method, headers, body) while `status` never shows the secret, `result` prints the
upstream's bytes, `--wait` reports every way a job ends, `jobs` and `dead-letters list` follow
every page, `cancel` and `dead-letters purge` do what they say, and a bad option is one line and
exit 2 before anything is sent."""

from __future__ import annotations

import importlib
import json
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from click.testing import CliRunner

from apps.cli.common import EXIT_FAILED, EXIT_USAGE
from apps.cli.main import main
from apps.harness.redis_launcher import free_port
from tests.support.helpers import CLI, Processes, allow, child_env, get_json, wait_until

SECRET = "s3cr3t"
CLIENT = importlib.import_module("apps.cli.client")
COMMANDS = importlib.import_module("apps.cli.client_commands")


def cli(*args: str, stdin: str | None = None, **env: object) -> subprocess.CompletedProcess[str]:
    """Run ``queue-contrast ARGS`` with no API_TOKEN and stdin from ``stdin`` (else /dev/null:
    never a terminal)."""
    return subprocess.run(
        [*CLI, *args],
        env=child_env(**env),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("queue-contrast: "), lines
    return lines[0]


def arrived(upstream: str, job_id: str) -> list[dict[str, Any]]:
    """What the witness received for ``job_id``."""
    answer = httpx.get(upstream + "/requests", params={"job": job_id}, trust_env=False, timeout=10)
    found: list[dict[str, Any]] = answer.json()["requests"]
    return found


def in_process(*args: str, stdin: str | None = None) -> Any:
    """``queue-contrast ARGS`` run in this process (so a test may patch the client)."""
    return CliRunner().invoke(main, list(args), input=stdin, env={"API_TOKEN": None})


@pytest.fixture
def api(processes: Processes, upstream: str) -> str:
    """An in-memory `serve` that may fetch the upstream; one try per job; room for a batch."""
    _, url = processes.serve(
        QUEUE_BACKEND="inmemory",
        MAX_TRIES=1,
        WORKERS=10,
        QUEUE_MAXSIZE=200,
        ALLOWED_HOSTS=allow(upstream),
    )
    return url


def test_submit_sends_the_whole_request_and_status_never_shows_the_secret(
    api: str, upstream: str
) -> None:
    """`submit --method POST --header 'Authorization: Bearer …' --json` to the stand-in inference
    API arrives intact at the witness; `status` (readable and --json) masks the credential;
    `result` is the API's answer."""
    url = f"{upstream}/infer"
    sent = cli(
        "submit", "--api", api, "--method", "POST",
        "--header", f"Authorization: Bearer {SECRET}", "--header", "X-Trace:t-1",
        "--json", '{"a": 1}', "--id", "post-1", "--wait", "--timeout", "60", url,
    )  # fmt: skip
    assert (sent.returncode, sent.stdout) == (0, f"post-1 done http=200 attempts=1 {url}\n"), sent
    [request] = arrived(upstream, "post-1")
    assert request["method"] == "POST"
    assert request["headers"]["authorization"] == f"Bearer {SECRET}"
    assert request["headers"]["x-trace"] == "t-1"
    assert request["headers"]["content-type"] == "application/json"
    assert json.loads(request["body"]) == {"a": 1}

    shown = cli("status", "--api", api, "post-1")
    assert shown.returncode == 0, shown.stderr
    assert SECRET not in shown.stdout + shown.stderr
    assert re.search(r"^status: +done$", shown.stdout, re.M), shown.stdout
    assert re.search(rf"^request: +POST {re.escape(url)}$", shown.stdout, re.M), shown.stdout
    assert re.search(r"^header: +Authorization: \*\*\*$", shown.stdout, re.M), shown.stdout
    assert re.search(r"^header: +X-Trace: t-1$", shown.stdout, re.M), shown.stdout
    assert re.search(r"^response: +HTTP 200, ", shown.stdout, re.M), shown.stdout
    raw = cli("status", "--api", api, "--json", "post-1")
    assert SECRET not in raw.stdout + raw.stderr
    record = json.loads(raw.stdout)
    assert record == get_json(f"{api}/jobs/post-1")
    assert record["headers"]["Authorization"] == "***"

    result = cli("result", "--api", api, "post-1")  # the stand-in inference API's answer
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"output": {"a": 1}, "key": "post-1", "effect": 1}


def test_submit_reads_a_body_from_a_file_or_stdin(api: str, upstream: str, tmp_path: Path) -> None:
    """`--data @FILE` sends the file's text as text/plain; `--json @-` sends stdin's JSON."""
    page = tmp_path / "note.txt"
    page.write_text("héllo\nwörld", encoding="utf-8")
    put = cli("submit", "--api", api, "-X", "PUT", "--data", f"@{page}", "--id", "put-1",
              "--wait", upstream + "/notes/1")  # fmt: skip
    assert put.returncode == 0, put.stderr
    [request] = arrived(upstream, "put-1")
    assert (request["method"], request["body"]) == ("PUT", "héllo\nwörld")
    assert request["headers"]["content-type"] == "text/plain; charset=utf-8"
    patch = cli("submit", "--api", api, "-X", "patch", "--json", "@-", "--id", "patch-1",
                "--wait", upstream + "/notes/1", stdin='[1, {"b": null}]')  # fmt: skip
    assert patch.returncode == 0, patch.stderr
    [request] = arrived(upstream, "patch-1")
    assert request["method"] == "PATCH" and json.loads(request["body"]) == [1, {"b": None}]


def test_a_crawl_batch_reads_back_every_page_exactly(api: str, upstream: str) -> None:
    """A batch of GETs submitted with --wait: `result ID` prints each page byte for byte; a URL
    the service refuses is one line on stderr and the rest of its batch still runs; a job with
    no stored body, or an unknown id, is one line and exit 1; `--wait` on a job that has not
    ended by --timeout says so and exits 1."""
    texts = [f"<p>page {i} – ü</p>\n" * 3 for i in range(3)]
    pages = {f"{upstream}/page/{i}?text={quote(text)}": text for i, text in enumerate(texts)}
    done = cli("submit", "--api", api, "--wait", "--timeout", "60", *pages)
    assert done.returncode == 0, done.stderr
    ids = {line.split()[-1]: line.split()[0] for line in done.stdout.splitlines()}
    assert set(ids) == set(pages)
    for url, text in pages.items():
        body = subprocess.run(
            [*CLI, "result", "--api", api, ids[url]],
            env=child_env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert (body.returncode, body.stdout) == (0, text.encode())

    refused = f"http://127.0.0.1:{free_port()}/not-allowed"  # the guard refuses it: 422
    mixed = cli("submit", "--api", api, "--wait", refused, upstream + "/after-the-refusal")
    assert mixed.returncode == EXIT_FAILED
    assert f"queue-contrast: {refused}: 422 url: " in one_line(mixed.stderr)
    assert mixed.stdout.endswith(f" done http=200 attempts=1 {upstream}/after-the-refusal\n")

    later = cli("submit", "--api", api, "--delay", "3600", "--id", "later", upstream + "/x")
    assert later.stdout == f"later scheduled {upstream}/x\n", later.stderr
    again = cli(
        "submit", "--api", api, "--id", "later", "--wait", "--timeout", "1", upstream + "/x"
    )
    assert again.returncode == EXIT_FAILED, again.stderr  # known id; still scheduled at --timeout
    assert again.stdout == f"later timeout status=scheduled http=- attempts=0 {upstream}/x\n"
    none = cli("result", "--api", api, "later")
    assert none.returncode == EXIT_FAILED and none.stdout == ""
    assert one_line(none.stderr) == (
        "queue-contrast: job 'later' has no stored response body (its status is scheduled)"
    )
    unknown = cli("result", "--api", api, "nope")
    assert unknown.returncode == EXIT_FAILED and "404 unknown job 'nope'" in one_line(
        unknown.stderr
    )


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts itself; each killed and reaped by PID at the end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=15)


def test_submit_wait_prints_each_ending_as_it_happens_cancelled_included(
    api: str, upstream: str, background: list[subprocess.Popen[str]]
) -> None:
    """`submit --wait` prints a fast job's line while a slow one still runs; once another client
    cancels the running one it prints `cancelled` for it and exits 1 (not every job ended done)."""
    fast, slow = f"{upstream}/fast?latency_ms=0", f"{upstream}/slow?latency_ms=20000"
    waiting = subprocess.Popen(
        [*CLI, "submit", "--api", api, "--wait", "--timeout", "60", fast, slow],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    background.append(waiting)
    assert waiting.stdout is not None
    ready, _, _ = select.select([waiting.stdout], [], [], 30)
    assert ready, "no line from submit --wait within 30 s"
    first = waiting.stdout.readline()
    assert re.fullmatch(rf"\w+ done http=200 attempts=1 {re.escape(fast)}\n", first), first
    assert waiting.poll() is None, "it ended before the slow job did"

    def slow_job() -> str | None:
        seen = get_json(upstream + "/requests")["requests"]
        return next((r["job"] for r in seen if r["path"] == "/slow"), None)

    job_id = wait_until(slow_job, 30, "the slow job to reach the upstream")
    cancelled = cli("cancel", "--api", api, job_id)
    assert (cancelled.returncode, cancelled.stdout) == (0, f"{job_id} cancelled\n")
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == EXIT_FAILED, err
    assert re.fullmatch(rf"{job_id} cancelled http=- attempts=\d+ {re.escape(slow)}\n", out), out


def test_jobs_follows_every_page(api: str, upstream: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`jobs` (pages of 3 here) lists all 7 jobs once each in order, stops at --limit, lists
    newest first and by status; --json is the records themselves."""
    monkeypatch.setattr(CLIENT, "PAGE", 3)
    urls = [f"{upstream}/j/{i}?latency_ms=0" for i in range(6)] + [f"{upstream}/j/x?status=404"]
    sent = cli("submit", "--api", api, *urls)
    assert sent.returncode == 0, sent.stderr
    ids = [line.split()[0] for line in sent.stdout.splitlines()]
    wait_until(lambda: get_json(api + "/stats")["done"] == 6, 60, "six jobs done")
    wait_until(lambda: get_json(api + "/stats")["failed"] == 1, 60, "one job failed")

    every = in_process("jobs", "--api", api, "--limit", "0")
    assert every.exit_code == 0, every.output
    lines = every.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ids
    assert lines[0] == f"{ids[0]} done GET {urls[0]} attempts=1"
    assert lines[-1] == f"{ids[-1]} failed GET {urls[-1]} attempts=1 error='HTTP 404'"
    five = in_process("jobs", "--api", api, "--limit", "5")
    assert [line.split()[0] for line in five.stdout.splitlines()] == ids[:5]
    newest = in_process("jobs", "--api", api, "--order", "newest", "--limit", "4")
    assert [line.split()[0] for line in newest.stdout.splitlines()] == ids[::-1][:4]
    failed = in_process("jobs", "--api", api, "--status", "failed")
    assert failed.stdout.splitlines() == [lines[-1]]
    as_json = in_process("jobs", "--api", api, "--json", "--limit", "0")
    assert [r["id"] for r in json.loads(as_json.stdout)] == ids


def test_dead_letters_list_every_page_and_purge(
    api: str, upstream: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """105 dead letters (more than the service's default page of 100): `list` prints them all;
    `purge` refuses without --yes off a terminal, asks on one, keeps younger ones with
    --older-than, and says how many it purged."""
    batch = tmp_path / "urls.txt"
    batch.write_text("".join(f"{upstream}/dl/{i}?status=404&latency_ms=0\n" for i in range(105)))
    sent = cli("submit", "--api", api, "--file", str(batch), "--wait", "--timeout", "120")
    assert sent.returncode == EXIT_FAILED and len(sent.stdout.splitlines()) == 105, sent.stderr
    wait_until(lambda: get_json(api + "/stats")["dead_letters"] == 105, 30, "105 dead letters")

    listed = cli("dead-letters", "list", "--api", api)
    assert listed.returncode == 0, listed.stderr
    assert len(set(listed.stdout.splitlines())) == 105

    refused = cli("dead-letters", "purge", "--api", api)
    assert refused.returncode == EXIT_USAGE and "give --yes" in one_line(refused.stderr)
    monkeypatch.setattr(COMMANDS, "_interactive", lambda: True)
    declined = in_process("dead-letters", "purge", "--api", api, stdin="n\n")
    assert declined.exit_code == EXIT_FAILED and "nothing purged" in declined.stderr
    young = cli("dead-letters", "purge", "--api", api, "--older-than", "3600", "--yes")
    assert (young.returncode, young.stdout) == (0, "purged 0 dead letters\n"), young.stderr
    assert get_json(api + "/stats")["dead_letters"] == 105

    purged = in_process("dead-letters", "purge", "--api", api, stdin="y\n")
    assert (purged.exit_code, purged.stdout) == (0, "purged 105 dead letters\n"), purged.output
    assert "Delete every dead letter for good?" in purged.stderr
    assert get_json(api + "/stats")["dead_letters"] == 0
    assert cli("dead-letters", "list", "--api", api).stdout == ""


@pytest.mark.parametrize("backend", ["inmemory", "durable"])
def test_cancel_queued_and_scheduled_jobs_and_409_for_a_done_one(
    backend: str, processes: Processes, upstream: str, request: pytest.FixtureRequest
) -> None:
    """`cancel` of a job held by a paused flow or scheduled an hour ahead prints `<id>
    cancelled` (and it is never fetched); a done job is 409 and an unknown one 404, one line and
    exit 1 each; `result` of the done job is the upstream's text, and submitting its id again
    says `existing=true` (on both backends)."""
    env: dict[str, object] = {"QUEUE_BACKEND": backend, "ALLOWED_HOSTS": allow(upstream)}
    if backend == "durable":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    _, api = processes.serve(**env)
    if backend == "durable":
        processes.worker(**env)
    paused = httpx.post(f"{api}/flows/held/pause", trust_env=False, timeout=10)
    assert paused.status_code == 200, paused.text
    held = cli("submit", "--api", api, "--flow-key", "held", "--id", "c-held", upstream + "/h")
    assert held.stdout == f"c-held queued {upstream}/h\n", held.stderr
    tomorrow = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86_400))
    later = cli("submit", "--api", api, "--run-at", tomorrow, "--id", "c-later", upstream + "/l")
    assert later.stdout == f"c-later scheduled {upstream}/l\n", later.stderr
    fin = f"{upstream}/fin?text=finished"
    done = cli("submit", "--api", api, "--id", "c-done", "--wait", "--timeout", "60", fin)
    assert done.returncode == 0, done.stderr

    for job_id in ("c-held", "c-later"):
        cancelled = cli("cancel", "--api", api, job_id)
        assert (cancelled.returncode, cancelled.stdout) == (0, f"{job_id} cancelled\n")
    shown = cli("status", "--api", api, "c-held")
    assert re.search(r"^status: +cancelled$", shown.stdout, re.M), shown.stdout
    known = cli("submit", "--api", api, "--id", "c-done", fin)
    assert known.stdout == f"c-done done existing=true {fin}\n", known.stderr
    conflict = cli("cancel", "--api", api, "c-done")
    assert conflict.returncode == EXIT_FAILED
    assert re.fullmatch(r"queue-contrast: 409 .*c-done.* done", one_line(conflict.stderr))
    unknown = cli("cancel", "--api", api, "c-nope")
    assert unknown.returncode == EXIT_FAILED and ": 404 " in one_line(unknown.stderr)
    result = cli("result", "--api", api, "c-done")
    assert (result.returncode, result.stdout) == (0, "finished")

    resumed = httpx.post(f"{api}/flows/held/resume", trust_env=False, timeout=10)
    assert resumed.status_code == 200, resumed.text
    after = cli("submit", "--api", api, "--flow-key", "held", "--wait", "--timeout", "60",
                upstream + "/after")  # fmt: skip
    assert after.returncode == 0, after.stderr  # behind c-held in its flow: c-held was skipped
    assert arrived(upstream, "c-held") == [] and arrived(upstream, "c-later") == []


NOWHERE = f"http://127.0.0.1:{free_port()}"  # bound and released: nothing listens there
URL = "http://example.com/x"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["submit", "--header", f"Authorization Bearer {SECRET}", URL], "--header #1 is not"),
        (["submit", "-H", "Bad Name: v", URL], "--header #1 is not 'Name: Value'"),
        (["submit", "-H", "X-A: 1", "-H", "x-a: 2", URL], "--header x-a is given twice"),
        (["submit", "-X", "POST", "--json", '{"a":', URL], "--json is not valid JSON: Expecting"),
        (["submit", "-X", "POST", "--json", "NaN", URL], "--json is not valid JSON: NaN"),
        (["submit", "--json", "{}", URL], "--json sends a body: use --method POST"),
        (["submit", "-X", "HEAD", "--data", "x", URL], "--data sends a body"),
        (["submit", "-X", "POST", "--json", "1", "--data", "x", URL], "--json or --data, not both"),
        (["submit", "-X", "PUT", "--data", "@/no/such/file", URL], "--data @/no/such/file: cannot"),
        (["submit", "--delay", "1", "--run-at", "2030-01-02T03:04:05Z", URL], "not both"),
        (["submit", "--run-at", "2030-01-02T03:04:05", URL], "--run-at must be an RFC 3339"),
        (["submit", "--run-at", "tomorrow", URL], "--run-at must be an RFC 3339"),
        (["submit", "--id", "a", URL, URL + "2"], "--id names one job, but 2 URLs"),
        (["submit", "--priority", "12", URL], "'--priority'"),
        (["submit", "--method", "TRACE", URL], "'--method'"),
        (["submit", "--delay", "-1", URL], "'--delay'"),
        (["submit", "--timeout-s", "0", URL], "'--timeout-s'"),
        (["submit", "--max-tries", "0", URL], "'--max-tries'"),
        (["submit"], "nothing to submit"),
        (["status"], "Missing argument 'ID'"),
        (["jobs", "--status", "lost"], "'--status'"),
        (["jobs", "--limit", "-1"], "'--limit'"),
        (["jobs", "--order", "random"], "'--order'"),
        (["dead-letters", "purge", "--older-than", "-5"], "'--older-than'"),
        (["dead-letters", "purge"], "give --yes"),
        (["dead-letters", "retry"], "JOB_ID, or --all"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_a_bad_option_is_one_line_and_exit_2_before_anything_is_sent(
    args: list[str], says: str
) -> None:
    """Each bad option or argument: exit 2, one line naming it and where to get help, nothing
    on stdout, no request (the --api has no service: trying would be exit 3), no secret echoed."""
    done = in_process(*args, "--api", NOWHERE)
    assert done.exit_code == EXIT_USAGE, done.output
    line = one_line(done.stderr)
    assert says in line and line.endswith(" --help')"), line
    assert done.stdout == "" and SECRET not in done.stderr


async def test_submit_waits_out_a_503_whatever_its_retry_after_says() -> None:
    """A 503 whose Retry-After is an HTTP date (not seconds) is waited out like any other: the
    job is submitted again and accepted, not a crash."""
    answers = [
        httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, json={}),
        httpx.Response(202, json={"id": "j", "status": "queued", "existing": False}),
    ]
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return answers[len(seen) - 1]

    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        accepted = await CLIENT.submit_one(client, {"url": URL}, time.monotonic() + 30)
    assert (accepted.id, accepted.status, accepted.existing) == ("j", "queued", False)
    assert len(seen) == 2 and seen[0] == seen[1]
