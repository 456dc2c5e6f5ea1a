"""The flow-control routes and per-key metrics: GET/PUT/DELETE /flows/{key}, pause and resume,
keys with colons and IPv6 brackets in the path, 422s naming the field, and ``/metrics`` flow gauges
that equal ``GET /flows`` with at most ``FLOW_SERIES`` keys plus ``_other``. Every route test runs
on every backend (``tests.support.service_api``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apps.service.metrics import FLOW_SERIES, OTHER, flow_rows
from pipeline.jobs import FlowLimit, FlowState
from tests.support.helpers import async_wait_until
from tests.support.service_api import BACKENDS, Api, open_api
from tests.test_metrics import samples

LIMIT = {"parallelism": 4, "rate": 10, "period_s": 2.0}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def api(backend: str, upstream: str, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    async with open_api(backend, upstream, request) as service:
        yield service


async def _get(api: Api, path: str) -> dict[str, Any]:
    response = await api.client.get(path)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_put_then_get_a_key_limit(api: Api) -> None:
    """PUT /flows/{key} answers the key's state with its own limit; GET /flows and /flows/{key}
    show the same; a key never seen shows no limit and nothing in flight."""
    response = await api.client.put("/flows/api.example.com:443", json=LIMIT)
    assert response.status_code == 200, response.text
    state = response.json()
    assert state["key"] == "api.example.com:443" and state["own_limit"] is True
    assert {k: state[k] for k in LIMIT} == LIMIT
    assert (state["in_flight"], state["waiting"], state["paused"]) == (0, 0, False)
    assert await _get(api, "/flows/api.example.com:443") == state
    listed = await _get(api, "/flows")
    assert [f for f in listed["flows"] if f["key"] == "api.example.com:443"] == [state]
    assert listed["default"] is None
    fresh = await _get(api, "/flows/never.seen:80")
    assert fresh["own_limit"] is False and fresh["parallelism"] is None and fresh["rate"] is None
    assert fresh["in_flight"] == 0 and fresh["throttled_until"] is None


async def test_the_default_limit_is_put_on_star(api: Api) -> None:
    """PUT /flows/* sets the default: GET /flows says it, keys without their own inherit it,
    DELETE /flows/* removes it."""
    response = await api.client.put("/flows/*", json={"parallelism": 20})
    assert response.status_code == 200, response.text
    default = {"parallelism": 20, "rate": None, "period_s": 1.0}
    assert (await _get(api, "/flows"))["default"] == default
    inherited = await _get(api, "/flows/other.example:80")
    assert inherited["parallelism"] == 20 and inherited["own_limit"] is False
    assert (await api.client.delete("/flows/*")).json() == {"key": "*", "deleted": True}
    assert (await _get(api, "/flows"))["default"] is None
    assert (await _get(api, "/flows/other.example:80"))["parallelism"] is None


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("[::1]:8080", "[::1]:8080"),
        ("[::1]:8080", "%5B%3A%3A1%5D%3A8080"),
        ("[2001:db8::5]:443", "%5B2001%3Adb8%3A%3A5%5D%3A443"),
        ("host.example:80", "host.example%3A80"),
    ],
)
async def test_keys_with_colons_and_brackets_route(api: Api, key: str, path: str) -> None:
    """host:port and [IPv6]:port keys reach the routes as they are or percent-encoded."""
    put = await api.client.put(f"/flows/{path}", json={"rate": 3})
    assert put.status_code == 200, put.text
    assert put.json()["key"] == key and put.json()["rate"] == 3
    assert (await _get(api, f"/flows/{path}"))["key"] == key
    paused = await api.client.post(f"/flows/{path}/pause")
    assert paused.status_code == 200 and paused.json()["key"] == key
    assert paused.json()["paused"] is True
    assert key in [f["key"] for f in (await _get(api, "/flows"))["flows"]]
    resumed = await api.client.post(f"/flows/{path}/resume")
    assert resumed.json()["paused"] is False
    deleted = await api.client.delete(f"/flows/{path}")
    assert deleted.status_code == 200 and deleted.json() == {"key": key, "deleted": True}


async def test_delete_a_key_without_a_limit_is_404(api: Api) -> None:
    """DELETE /flows/{key} twice: 200 then 404 naming `key`; the key falls back to the default."""
    await api.client.put("/flows/k1", json={"parallelism": 1})
    assert (await api.client.delete("/flows/k1")).status_code == 200
    again = await api.client.delete("/flows/k1")
    assert again.status_code == 404 and again.json()["field"] == "key"
    assert (await _get(api, "/flows/k1"))["own_limit"] is False


async def test_pause_holds_a_keys_jobs_and_resume_releases_them(api: Api) -> None:
    """A paused key's jobs wait (the key says paused, the upstream sees nothing), other keys run;
    after resume they run."""
    paused = await api.client.post("/flows/held/pause")
    assert paused.status_code == 200 and paused.json()["paused"] is True
    held = [await api.submit(f"/held/{i}", flow_key="held") for i in range(2)]
    other = await api.submit("/other", flow_key="free")
    await api.final([other])
    assert [(await api.record(i))["status"] for i in held] == ["queued", "queued"]
    state = await _get(api, "/flows/held")
    assert state["paused"] is True and state["waiting"] == 2 and state["in_flight"] == 0
    assert not set(held) & set(await api.witnessed())
    resumed = await api.client.post("/flows/held/resume")
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    records = await api.final(held)
    assert [r["status"] for r in records.values()] == ["done", "done"]


BAD_LIMITS: list[tuple[str, Any, str]] = [
    ("parallelism-zero", {"parallelism": 0}, "parallelism"),
    ("parallelism-string", {"parallelism": "4"}, "parallelism"),
    ("parallelism-bool", {"parallelism": True}, "parallelism"),
    ("parallelism-float", {"parallelism": 1.5}, "parallelism"),
    ("rate-negative", {"rate": -1}, "rate"),
    ("rate-huge", {"rate": 10**9}, "rate"),
    ("period-zero", {"rate": 1, "period_s": 0}, "period_s"),
    ("period-string", {"rate": 1, "period_s": "1"}, "period_s"),
    ("unknown-field", {"rate": 1, "burst": 5}, "burst"),
    ("not-an-object", [1, 2], "body"),
]


@pytest.mark.parametrize(
    ("body", "field_name"), [c[1:] for c in BAD_LIMITS], ids=[c[0] for c in BAD_LIMITS]
)
async def test_bad_limit_is_422_naming_the_field(api: Api, body: Any, field_name: str) -> None:
    """A bad PUT body is 422 naming the limit's own field; the key keeps no limit."""
    response = await api.client.put("/flows/k2", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field_name
    assert (await _get(api, "/flows/k2"))["own_limit"] is False


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/flows/a%20b"),
        ("PUT", "/flows/a%7Cb"),
        ("DELETE", "/flows/" + "k" * 200),
        ("POST", "/flows/*/pause"),
        ("POST", "/flows/a%2Ab/resume"),
    ],
)
async def test_bad_key_is_422_naming_key(api: Api, method: str, path: str) -> None:
    """A key outside the flow-key alphabet (or pausing "*", the default) is 422 naming `key`."""
    response = await api.client.request(method, path, json={"rate": 1})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "key"
    if path.startswith("/flows/*/"):
        assert "default" in response.json()["error"]  # says why, not just "bad characters"


# -- /metrics ----------------------------------------------------------------------------------


async def test_flow_metrics_equal_get_flows(api: Api) -> None:
    """Per-key gauges on /metrics equal the same key's numbers in GET /flows, labelled by backend;
    the flow families are promtool-style (gauges without _total)."""
    await api.client.post("/flows/held/pause")
    for i in range(3):
        await api.submit(f"/m/{i}", flow_key="held")
    await api.run()  # a real backend's workers take the jobs and hold them at the paused key

    async def held_back() -> dict[str, dict[str, Any]] | None:
        flows = {f["key"]: f for f in (await _get(api, "/flows"))["flows"]}
        return flows if flows.get("held", {}).get("waiting") == 3 else None

    flows = await async_wait_until(held_back, 10, "3 jobs waiting at the paused key")
    text = (await api.client.get("/metrics")).text
    got = samples(text)
    labels = (("backend", api.producer.name), ("key", "held"))
    assert got[("qc_flow_waiting", labels)] == flows["held"]["waiting"] == 3
    assert got[("qc_flow_in_flight", labels)] == flows["held"]["in_flight"] == 0
    assert got[("qc_flow_paused", labels)] == 1
    assert got[("qc_flow_throttled", labels)] == 0
    assert got[("qc_flow_window_starts", labels)] == flows["held"]["starts_in_window"]
    assert got[("qc_flow_keys", (("backend", api.producer.name),))] == len(flows)
    kinds = {f.name: f.type for f in text_string_to_metric_families(text) if "flow" in f.name}
    assert kinds and set(kinds.values()) == {"gauge"}
    assert not any(name.endswith("_total") for name in kinds)


async def test_flow_metrics_keep_the_busiest_keys_and_sum_the_rest(
    upstream: str, request: pytest.FixtureRequest
) -> None:
    """With 25 busy keys, /metrics has the 20 with most jobs waiting plus `_other` summing the
    other 5: bounded label cardinality, nothing lost from the totals (the fake: no workers)."""
    async with open_api("fake", upstream, request) as api:
        for key in range(25):  # key k<n> gets n+1 queued jobs
            for _ in range(key + 1):
                await api.submit("/x", flow_key=f"k{key:02d}")
        got = samples((await api.client.get("/metrics")).text)
    waiting = {
        dict(labels)["key"]: value
        for (name, labels), value in got.items()
        if name == "qc_flow_waiting"
    }
    busiest = {f"k{n:02d}": n + 1.0 for n in range(5, 25)}
    assert waiting == {**busiest, OTHER: 1.0 + 2 + 3 + 4 + 5}
    assert len(waiting) == FLOW_SERIES + 1
    assert got[("qc_flow_keys", (("backend", "fake"),))] == 25


def test_flow_rows_fold_a_key_named_other_and_count_flags() -> None:
    """A real key named `_other` never makes a second `_other` series; folded paused and
    throttled keys are counted; "*" has no series; few keys fold nothing."""
    now = 1000.0
    states = [
        FlowState(f"k{n:02d}", FlowLimit(), False, in_flight=1, waiting=100 - n) for n in range(22)
    ]
    states += [
        FlowState(OTHER, FlowLimit(), False, waiting=500),
        FlowState("p", FlowLimit(), True, paused=True),
        FlowState("t", FlowLimit(), True, throttled_until=now + 5),
        FlowState("old", FlowLimit(), True, throttled_until=now - 5),
        FlowState("*", FlowLimit(parallelism=3), True),
    ]
    rows = flow_rows(states, now)
    assert len(rows) == FLOW_SERIES + 1 and "*" not in rows
    assert set(rows) - {OTHER} == {f"k{n:02d}" for n in range(20)}
    other = rows[OTHER]
    assert other["qc_flow_waiting"] == 500 + (100 - 20) + (100 - 21)
    assert other["qc_flow_in_flight"] == 2
    assert (other["qc_flow_paused"], other["qc_flow_throttled"]) == (1, 1)
    few = flow_rows(states[:3], now)
    assert set(few) == {"k00", "k01", "k02"}
