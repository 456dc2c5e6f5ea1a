"""The upstream stand-in, the witness every other test trusts: what it echoes, records and counts.

Most tests run it in-process through ``httpx.ASGITransport`` (the base URL's host:port is the
"local address" the app sees, so two base URLs stand for two ports); one starts the real
``queue-contrast upstream`` on two ports."""

from __future__ import annotations

import asyncio
import base64
import random
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from apps.cli.run_commands import upstream as upstream_command
from apps.harness import upstream as upstream_module
from apps.harness import witness as witness_module
from apps.harness.upstream import create_upstream
from tests.support.helpers import Processes, async_wait_until

HOST_A = "http://127.0.0.1:9001"
HOST_B = "http://127.0.0.1:9002"

EXISTING_STATS = (
    "hits",
    "unique_jobs",
    "duplicates",
    "in_flight",
    "max_concurrency",
    "completed",
    "connections",
)

Client = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """A factory of in-process clients, all talking to one upstream (latency 0 unless given)."""
    app = create_upstream(latency_ms=0)
    made: list[httpx.AsyncClient] = []

    def make(base_url: str = HOST_A) -> httpx.AsyncClient:
        made.append(httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url))
        return made[-1]

    yield make
    for c in made:
        await c.aclose()


async def _json(c: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await c.get(path, params=params)
    response.raise_for_status()
    return response.json()


async def test_a_plain_get_keeps_the_existing_counters(client: Client) -> None:
    """One GET with a job id: the /stats counters, /jobs entry and JSON answer are as before."""
    c = client()
    answer = await c.get("/page/1", headers={"X-Job-Id": "j1"})
    assert answer.status_code == 200
    assert answer.json() == {"job": "j1", "path": "/page/1", "method": "GET"}
    stats = await _json(c, "/stats")
    assert {k: stats[k] for k in EXISTING_STATS} == {
        "hits": 1,
        "unique_jobs": 1,
        "duplicates": 0,
        "in_flight": 0,
        "max_concurrency": 1,
        "completed": 1,
        "connections": 1,
    }
    jobs = await _json(c, "/jobs")
    assert set(jobs) == {"j1"}
    assert jobs["j1"]["hits"] == 1 and jobs["j1"]["open"] == 0
    assert jobs["j1"]["first"] <= jobs["j1"]["last"] <= jobs["j1"]["answered"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "GET", "OPTIONS"])
async def test_every_method_is_answered_with_its_json_body_echoed(
    client: Client, method: str
) -> None:
    """Each method reaches the catch-all, is counted, and its JSON body comes back parsed."""
    c = client()
    answer = await c.request(method, "/api/items/7", json={"a": [1, 2]}, headers={"X-Job-Id": "m1"})
    assert answer.status_code == 200
    assert answer.json() == {
        "job": "m1",
        "path": "/api/items/7",
        "method": method,
        "body_bytes": len(b'{"a":[1,2]}'),
        "json": {"a": [1, 2]},
    }
    assert (await _json(c, "/stats"))["hits"] == 1


async def test_head_is_answered_and_recorded(client: Client) -> None:
    """HEAD is a method the catch-all answers; the request log shows it."""
    c = client()
    assert (await c.head("/h", headers={"X-Job-Id": "h1"})).status_code == 200
    logged = (await _json(c, "/requests", job="h1"))["requests"]
    assert [e["method"] for e in logged] == ["HEAD"]


async def test_text_and_binary_bodies_are_echoed_and_logged(client: Client) -> None:
    """A text body comes back as ``body``; a non-UTF-8 one as base64, in the answer and the log."""
    c = client()
    text = await c.post("/t", content="héllo", headers={"Content-Type": "text/plain"})
    assert text.json()["body"] == "héllo" and text.json()["body_bytes"] == len("héllo".encode())
    raw = bytes([0xFF, 0x00, 0xFE])
    binary = await c.put("/b", content=raw, headers={"X-Job-Id": "bin"})
    assert base64.b64decode(binary.json()["body_base64"]) == raw
    [entry] = (await _json(c, "/requests", job="bin"))["requests"]
    assert entry["body_encoding"] == "base64" and base64.b64decode(entry["body"]) == raw
    assert entry["body_bytes"] == 3


async def test_the_request_log_keeps_every_header_body_and_arrival(client: Client) -> None:
    """/requests?job= lists that job's requests in arrival order with all their headers (secrets
    too), body, query, arrival time, local port and job id; other jobs are filtered out."""
    c = client()
    secret = {"Authorization": "Bearer s3cret", "X-Api-Key": "k-123"}
    await c.post("/a?x=1&y=2", json={"n": 1}, headers={"X-Job-Id": "r1", **secret})
    await c.get("/other", headers={"X-Job-Id": "r2"})
    await c.delete("/a", headers={"X-Job-Id": "r1", "Idempotency-Key": "r1"})
    logged = (await _json(c, "/requests", job="r1"))["requests"]
    assert [(e["method"], e["path"]) for e in logged] == [("POST", "/a"), ("DELETE", "/a")]
    first, second = logged
    assert first["headers"]["authorization"] == "Bearer s3cret"
    assert first["headers"]["x-api-key"] == "k-123"
    assert first["headers"]["x-job-id"] == "r1"
    assert first["headers"]["content-type"] == "application/json"
    assert second["headers"]["idempotency-key"] == "r1"
    assert first["query"] == "x=1&y=2"
    assert first["body"] == '{"n":1}' and first["body_encoding"] == "utf-8"
    assert first["job"] == "r1" and first["port"] == 9001 and first["host"] == "127.0.0.1:9001"
    assert 0 < first["arrived"] <= second["arrived"]
    assert first["seq"] < second["seq"]
    everything = await _json(c, "/requests")
    assert [e["job"] for e in everything["requests"]] == ["r1", "r2", "r1"]
    assert everything["dropped"] == 0


async def test_the_request_log_is_bounded_and_reset_clears_it(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past LOG_MAX entries the oldest go (and are counted as dropped); /reset empties the log."""
    monkeypatch.setattr(witness_module, "LOG_MAX", 3)
    c = client()
    await c.post("/reset")  # a new witness, built with the smaller log
    for i in range(5):
        await c.get(f"/n/{i}")
    log = await _json(c, "/requests")
    assert [e["path"] for e in log["requests"]] == ["/n/2", "/n/3", "/n/4"]
    assert log["dropped"] == 2
    await c.post("/reset")
    assert await _json(c, "/requests") == {"requests": [], "dropped": 0}


async def test_header_knobs_set_the_response_headers(client: Client) -> None:
    """?content_type ?etag ?last_modified ?location and repeated ?header=N:V reach the response."""
    c = client()
    answer = await c.get(
        "/k",
        params=[
            ("content_type", "application/vnd.x+json"),
            ("etag", '"v1"'),
            ("last_modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("location", "/elsewhere"),
            ("header", "X-One: 1"),
            ("header", "X-Two:two:parts"),
        ],
    )
    assert answer.headers["content-type"] == "application/vnd.x+json"
    assert answer.headers["etag"] == '"v1"'
    assert answer.headers["last-modified"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    assert answer.headers["location"] == "/elsewhere"
    assert answer.headers["x-one"] == "1" and answer.headers["x-two"] == "two:parts"
    assert (await c.get("/k", params={"header": "no-colon"})).status_code == 400


async def test_body_knobs_text_bytes_echo_and_bodyless_statuses(client: Client) -> None:
    """?text= is the exact body; ?bytes=N gives N bytes; ?echo=1 returns the request body with its
    Content-Type; a 304 or 204 has no body."""
    c = client()
    text = await c.get("/t", params={"text": "exact ✓ text"})
    assert text.text == "exact ✓ text" and text.headers["content-type"].startswith("text/plain")
    typed = await c.get("/t", params={"text": "<p>", "content_type": "text/html"})
    assert typed.text == "<p>" and typed.headers["content-type"] == "text/html"
    assert len((await c.get("/b", params={"bytes": 70_000})).content) == 70_000
    echoed = await c.post(
        "/e?echo=1", content=b"<x>\xff</x>", headers={"Content-Type": "application/xml"}
    )
    assert echoed.content == b"<x>\xff</x>"
    assert echoed.headers["content-type"] == "application/xml"
    not_modified = await c.get("/c", params={"status": 304, "etag": '"v1"'})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == '"v1"'
    assert (await c.delete("/d", params={"status": 204})).content == b""


def _keyed(key: str) -> dict[str, str]:
    return {"X-Job-Id": key, "Idempotency-Key": key}


async def test_infer_replays_a_key_it_has_applied(client: Client) -> None:
    """Two deliveries with one Idempotency-Key: one effect, one replay, the same status and body."""
    c = client()
    first = await c.post("/infer?status=201", json={"prompt": "hi"}, headers=_keyed("k1"))
    assert first.status_code == 201
    assert first.json() == {"output": {"prompt": "hi"}, "key": "k1", "effect": 1}
    again = await c.post("/infer", json={"prompt": "changed"}, headers=_keyed("k1"))
    assert (again.status_code, again.content) == (201, first.content)
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    stats = await _json(c, "/stats")
    assert (stats["deliveries"], stats["effects"], stats["replays"]) == (2, 1, 1)
    assert stats["infer_keys"] == 1
    assert (stats["hits"], stats["duplicates"]) == (2, 1)  # /infer requests are hits too
    assert await _json(c, "/effects") == {"k1": {"deliveries": 2, "effects": 1, "replays": 1}}


async def test_concurrent_duplicates_wait_for_the_first_and_apply_once(client: Client) -> None:
    """Three requests with one key at once: the first applies the effect, the two that arrive
    while it is processed wait and get its stored answer."""
    c = client()
    answers = await asyncio.gather(
        *(c.post("/infer?latency_ms=300", json={"n": 1}, headers=_keyed("same")) for _ in range(3))
    )
    assert {a.content for a in answers} == {answers[0].content}
    assert answers[0].json()["effect"] == 1
    assert sorted(a.headers.get("idempotent-replayed", "") for a in answers) == ["", "true", "true"]
    assert await _json(c, "/effects") == {"same": {"deliveries": 3, "effects": 1, "replays": 2}}


async def test_a_failed_answer_is_not_stored_so_the_retry_applies(client: Client) -> None:
    """fail_times=1: the first delivery gets 503 and applies nothing; the retry applies the effect
    (not a replay of the 503); a third delivery replays the success."""
    c = client()
    url = "/infer?fail_times=1&status=503&retry_after=1"
    failed = await c.post(url, json={"x": 1}, headers=_keyed("f1"))
    assert failed.status_code == 503 and failed.headers["retry-after"] == "1"
    assert await _json(c, "/effects") == {"f1": {"deliveries": 1, "effects": 0, "replays": 0}}
    retried = await c.post(url, json={"x": 1}, headers=_keyed("f1"))
    assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers
    assert retried.json() == {"output": {"x": 1}, "key": "f1", "effect": 1}
    third = await c.post(url, json={"x": 1}, headers=_keyed("f1"))
    assert (third.status_code, third.content) == (200, retried.content)
    assert await _json(c, "/effects") == {"f1": {"deliveries": 3, "effects": 1, "replays": 1}}


async def test_a_crash_answer_is_applied_and_its_redelivery_replayed(client: Client) -> None:
    """?crash=1&status=200&fail_times=1: the effect is applied before the crash header goes out, so the
    re-delivery is a replay (and carries no crash header)."""
    c = client()
    crash = await c.post("/infer?crash=1&status=200&fail_times=1", json={}, headers=_keyed("c1"))
    assert crash.status_code == 200 and crash.headers["x-test-crash"] == "1"
    again = await c.post("/infer?crash=1&status=200&fail_times=1", json={}, headers=_keyed("c1"))
    assert again.content == crash.content and "x-test-crash" not in again.headers
    assert (await _json(c, "/effects"))["c1"] == {"deliveries": 2, "effects": 1, "replays": 1}


async def test_slow_times_slows_only_each_jobs_first_hits(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """?latency_ms=N&slow_times=1: a job's first hit waits N ms, its later hits the default
    latency; requests without X-Job-Id always wait N ms."""
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(upstream_module.asyncio, "sleep", sleep)
    c = client()
    url = "/slow?latency_ms=6000&slow_times=1"
    for job in ("s1", "s1", "s2", "s1"):
        assert (await c.get(url, headers={"X-Job-Id": job})).status_code == 200
    await c.get(url)
    assert delays == [6.0, 0.0, 6.0, 0.0, 6.0]


async def test_infer_without_a_key_applies_every_time(client: Client) -> None:
    """No Idempotency-Key: each delivery is an effect; a body that is not JSON is a 400, no effect."""
    c = client()
    one = await c.post("/infer", json=[1])
    two = await c.post("/infer", json=[1])
    assert (one.json()["effect"], two.json()["effect"]) == (1, 2)
    assert one.json()["key"] is None
    bad = await c.post("/infer", content=b"{not json", headers=_keyed("bad"))
    assert bad.status_code == 400
    stats = await _json(c, "/stats")
    assert (stats["deliveries"], stats["effects"], stats["replays"]) == (3, 2, 0)
    assert await _json(c, "/effects") == {"bad": {"deliveries": 1, "effects": 0, "replays": 0}}


@pytest.mark.parametrize(
    ("times", "window_s", "expected"),
    [
        ([], 1.0, 0),
        ([5.0], 1.0, 1),
        ([0.0, 1.0], 1.0, 1),  # exactly one window apart: different windows
        ([0.0, 0.5, 1.0], 1.0, 2),
        ([0.0, 0.25, 0.5, 0.75, 1.0, 1.25], 1.0, 4),  # a closed interval would say 5
        ([0.0, 0.25, 0.5, 0.75, 1.0, 1.25], 1.25, 5),
        ([0.0, 0.25, 0.5, 0.75, 1.0, 1.25], 0.25, 1),
        ([2.0, 1.0, 1.0, 1.0], 1.0, 3),  # unsorted, simultaneous arrivals
        ([0.0, 0.125, 0.25, 1.0, 1.125, 1.25, 2.0], 1.0, 3),  # 3 per second, bursts
        ([0.0, 0.125, 0.25, 1.0, 1.125, 1.25, 2.0], 1.125, 4),
        ([0.0, 0.125, 0.25, 1.0, 1.125, 1.25, 2.0], 100.0, 7),
    ],
)
def test_max_arrivals_in_window_counts_half_open_windows(
    times: list[float], window_s: float, expected: int
) -> None:
    """The largest count of arrivals in any [t, t + window_s): exact at the window's edge."""
    assert witness_module.max_arrivals_in_window(times, window_s) == expected


def test_max_arrivals_in_window_matches_the_definition() -> None:
    """On random arrivals, the two-pointer count equals the brute-force count from each arrival."""
    rng = random.Random(7)
    for _ in range(200):
        times = [rng.randrange(0, 40) / 8 for _ in range(rng.randrange(1, 30))]
        window_s = rng.randrange(1, 16) / 8
        brute = max(sum(1 for u in times if t <= u < t + window_s) for t in times)
        assert witness_module.max_arrivals_in_window(times, window_s) == brute
    with pytest.raises(ValueError):
        witness_module.max_arrivals_in_window([1.0], 0)


async def test_stats_per_host_count_arrivals_and_concurrency_by_local_port() -> None:
    """Requests on two local ports are counted per host:port: hits, max_concurrency and the most
    arrivals in any ?window_s window, from the arrival times /arrivals lists."""
    now = [1000.0]
    app = create_upstream(latency_ms=0, clock=lambda: now[0])
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url=HOST_A) as a,
        httpx.AsyncClient(transport=transport, base_url=HOST_B) as b,
    ):
        for t in (1000.0, 1000.5, 1001.0, 1001.5):
            now[0] = t
            await a.get("/x")
        for t in (1000.25, 1000.375):
            now[0] = t
            await b.post("/infer", json={})
        now[0] = 1003.0
        await asyncio.gather(*(a.get("/slow?latency_ms=300") for _ in range(3)))

        stats = await _json(a, "/stats")
        assert stats["window_s"] == 1.0
        assert stats["hosts"] == {
            "127.0.0.1:9001": {
                "hits": 7,
                "in_flight": 0,
                "max_concurrency": 3,
                "max_arrivals_in_window": 3,  # the three at 1003.0
            },
            "127.0.0.1:9002": {
                "hits": 2,
                "in_flight": 0,
                "max_concurrency": 1,
                "max_arrivals_in_window": 2,
            },
        }
        assert (stats["hits"], stats["max_concurrency"]) == (9, 3)
        narrow = (await _json(a, "/stats", window_s=0.125))["hosts"]
        assert narrow["127.0.0.1:9002"]["max_arrivals_in_window"] == 1  # 0.125 apart exactly
        wide = (await _json(a, "/stats", window_s=1.5))["hosts"]
        assert wide["127.0.0.1:9001"]["max_arrivals_in_window"] == 3
        arrivals = (await _json(a, "/arrivals", host="127.0.0.1:9001"))["arrivals"]
        assert [x["t"] for x in arrivals] == [
            1000.0,
            1000.5,
            1001.0,
            1001.5,
            1003.0,
            1003.0,
            1003.0,
        ]
        assert [x["in_flight"] for x in arrivals] == [1, 1, 1, 1, 1, 2, 3]
        everything = (await _json(a, "/arrivals"))["arrivals"]
        assert [x["host"] for x in everything[:3]] == [
            "127.0.0.1:9001",
            "127.0.0.1:9002",
            "127.0.0.1:9002",
        ]
        for bad in ("0", "-1", "nan", "inf", "soon"):
            assert (await a.get("/stats", params={"window_s": bad})).status_code == 400
        await a.post("/reset")
        assert (await _json(a, "/stats"))["hosts"] == {}
        assert await _json(a, "/arrivals") == {"arrivals": []}


def test_every_upstream_option_has_help() -> None:
    """`queue-contrast upstream --help` explains every option."""
    undocumented = [p.name for p in upstream_command.params if not getattr(p, "help", None)]
    assert undocumented == []


async def test_the_real_upstream_serves_one_witness_on_two_ports(processes: Processes) -> None:
    """`queue-contrast upstream --port 0 --port 0`: one ready line with both URLs (the first right
    after "ready: "), one witness behind both ports, counted per host:port in /stats hosts."""
    proc, urls = processes.upstream_hosts(latency_ms=10, ports=2)
    assert len(set(urls)) == 2
    ready = next(line for line in proc.lines if "upstream ready:" in line)
    first = re.search(r"upstream ready: (http://\S+)", ready)
    assert first and first.group(1) == urls[0]
    a, b = urls
    key_a, key_b = (url.removeprefix("http://") for url in urls)
    async with httpx.AsyncClient(trust_env=False, timeout=30) as c:

        async def open_on_a() -> bool:
            hosts = (await c.get(f"{b}/stats")).json()["hosts"]
            return key_a in hosts and hosts[key_a]["in_flight"] == 2

        slow = [
            asyncio.create_task(c.get(f"{a}/slow?latency_ms=2000", headers={"X-Job-Id": f"s{i}"}))
            for i in range(2)
        ]
        await async_wait_until(open_on_a, 20, "two requests open on the first port")
        answer = await c.post(f"{b}/infer", json={"q": 1}, headers=_keyed("p2"))
        assert answer.json() == {"output": {"q": 1}, "key": "p2", "effect": 1}
        assert all(r.status_code == 200 for r in await asyncio.gather(*slow))
        stats = (await c.get(f"{a}/stats", params={"window_s": 5})).json()
        logged = (await c.get(f"{a}/requests", params={"host": key_b})).json()["requests"]
    assert stats["hosts"] == {
        key_a: {"hits": 2, "in_flight": 0, "max_concurrency": 2, "max_arrivals_in_window": 2},
        key_b: {"hits": 1, "in_flight": 0, "max_concurrency": 1, "max_arrivals_in_window": 1},
    }
    assert (stats["hits"], stats["unique_jobs"], stats["effects"]) == (3, 3, 1)
    [entry] = logged
    assert entry["port"] == int(key_b.rsplit(":", 1)[1]) and entry["path"] == "/infer"
    assert entry["headers"]["idempotency-key"] == "p2"
