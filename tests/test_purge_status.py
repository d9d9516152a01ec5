"""The purge API's status page and the calls it reads: GET /status, GET /purges?limit=N, hit ratio in GET /edges."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from purge_api.app import create_app, edge_view, hit_ratio
from purge_api.log import EdgeInfo, LogUnavailable, MemoryPurgeLog, Purge, RedisPurgeLog
from purge_api.settings import PurgeApiSettings
from tests.redis_server import RedisServer

TOKEN = "purge-secret"
READ_TOKEN = "read-only"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}


@pytest.fixture
def log() -> MemoryPurgeLog:
    return MemoryPurgeLog()


@pytest.fixture
async def client(log: MemoryPurgeLog) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(PurgeApiSettings(token=TOKEN, read_tokens=[READ_TOKEN]), purge_log=log)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        yield client


async def purge_tag(client: httpx.AsyncClient, tag: str) -> str:
    answer = await client.post("/purges", json={"kind": "tag", "values": [tag]}, headers=AUTH)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


async def heartbeat(log: MemoryPurgeLog, edge_id: str, **stats: int) -> None:
    await log.heartbeat(EdgeInfo(id=edge_id, region="eu-west", address=f"http://{edge_id}.test",
                                 heartbeat_at=time.time(), stats=stats))


async def test_status_page_is_served_without_a_token_and_holds_no_data(client: httpx.AsyncClient,
                                                                      log: MemoryPurgeLog) -> None:
    await heartbeat(log, "edge-secret-name")
    await purge_tag(client, "tag-secret-name")
    page = await client.get("/status")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "edge-secret-name" not in page.text and "tag-secret-name" not in page.text


async def test_status_page_runs_only_its_own_script_and_style(client: httpx.AsyncClient) -> None:
    page = await client.get("/status")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page.text, re.S)
        assert len(blocks) == 1
        digest = base64.b64encode(hashlib.sha256(blocks[0].encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in policy
    assert "src=" not in page.text and "href=" not in page.text  # nothing loaded from elsewhere
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_the_root_redirects_to_the_status_page(client: httpx.AsyncClient) -> None:
    answer = await client.get("/", follow_redirects=False)
    assert answer.status_code == 307 and answer.headers["location"] == "status"
    assert (await client.get("/", follow_redirects=True)).url.path == "/status"


async def test_listing_needs_a_read_or_purge_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/purges")).status_code == 401
    wrong = await client.get("/purges", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json() == {"error": "token not accepted"}
    assert (await client.get("/purges", headers=READ)).status_code == 200
    assert (await client.get("/purges", headers=AUTH)).status_code == 200


async def test_listing_gives_the_newest_purges_first_up_to_the_limit(client: httpx.AsyncClient) -> None:
    ids = [await purge_tag(client, f"t{i}") for i in range(25)]
    default = (await client.get("/purges", headers=READ)).json()
    assert [p["id"] for p in default["purges"]] == ids[::-1][:20]
    two = (await client.get("/purges", params={"limit": "2"}, headers=READ)).json()
    assert [p["id"] for p in two["purges"]] == [ids[24], ids[23]]
    assert two["purges"][0]["values"] == ["t24"]
    assert two["now"] >= two["purges"][0]["created_at"]
    assert len((await client.get("/purges", params={"limit": "100"}, headers=READ)).json()["purges"]) == 25


async def test_listing_of_an_empty_log_is_empty(client: httpx.AsyncClient) -> None:
    assert (await client.get("/purges", headers=READ)).json()["purges"] == []


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1.5", "1e2", "", "²", "9" * 5000])
async def test_listing_refuses_a_bad_limit(client: httpx.AsyncClient, limit: str) -> None:
    answer = await client.get("/purges", params={"limit": limit}, headers=READ)
    assert answer.status_code == 422
    assert answer.json() == {"error": "limit must be a whole number from 1 to 100"}


async def test_listing_shows_each_purge_applied_and_pending_per_edge(client: httpx.AsyncClient,
                                                                    log: MemoryPurgeLog) -> None:
    await heartbeat(log, "edge-a")
    await heartbeat(log, "edge-b")
    first, second = await purge_tag(client, "one"), await purge_tag(client, "two")
    logged = await log.find(first)
    assert logged is not None
    await log.ack("edge-a", [logged], time.time())
    listed = {p["id"]: p for p in (await client.get("/purges", headers=READ)).json()["purges"]}
    assert set(listed[first]["applied"]) == {"edge-a"} and listed[first]["pending"] == ["edge-b"]
    assert not listed[first]["complete"]
    assert listed[second]["applied"] == {} and listed[second]["pending"] == ["edge-a", "edge-b"]
    # The same answer as the single purge's status call.
    single = (await client.get(f"/purges/{first}", headers=READ)).json()
    assert single == listed[first]


async def test_listing_with_the_log_down_is_a_503(client: httpx.AsyncClient, log: MemoryPurgeLog,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async def down(count: int) -> list:
        raise LogUnavailable("redis: ConnectionError: refused")

    monkeypatch.setattr(log, "recent", down)
    answer = await client.get("/purges", headers=READ)
    assert answer.status_code == 503 and answer.json()["error"] == "purge log unavailable"


async def test_edges_carry_their_hit_ratio(client: httpx.AsyncClient, log: MemoryPurgeLog) -> None:
    await heartbeat(log, "edge-a", hits=3, misses=1, revalidations=0, passes=50)
    await heartbeat(log, "edge-b")
    edges = {e["id"]: e for e in (await client.get("/edges", headers=READ)).json()["edges"]}
    assert edges["edge-a"]["hit_ratio"] == 0.75  # passes are not cacheable lookups
    assert edges["edge-b"]["hit_ratio"] is None


@pytest.mark.parametrize(("stats", "ratio"), [
    ({}, None),
    ({"hits": 0, "misses": 0}, None),
    ({"hits": 1, "misses": 2}, 0.3333),
    ({"hits": 1, "misses": 0, "revalidations": 1}, 0.5),
    ({"hits": 4}, 1.0),
    ({"hits": "4", "misses": 1}, 0.0),  # a malformed count is ignored, not a 500
    ({"hits": True, "misses": -3}, None),
])
def test_hit_ratio_from_heartbeat_counters(stats: dict, ratio: float | None) -> None:
    assert hit_ratio(stats) == ratio


def test_edge_view_of_an_edge_from_before_hit_counts() -> None:
    view = edge_view(EdgeInfo(id="old", heartbeat_at=100.0), now=101.0, live_after=5)
    assert view["live"] and view["hit_ratio"] is None


async def test_memory_log_lists_recent_entries_newest_first() -> None:
    log = MemoryPurgeLog(maxlen=100)
    for i in range(150):
        await log.append(Purge(id=f"p{i}", kind="all", created_at=time.time()))
    assert [p.id for _, p in await log.recent(3)] == ["p149", "p148", "p147"]
    assert len(await log.recent(1000)) == 100  # only what the log still holds


async def test_redis_log_lists_recent_entries_newest_first(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path).start()
    log = RedisPurgeLog(redis.url)
    try:
        assert await log.recent(5) == []
        for i in range(4):
            await log.append(Purge(id=f"p{i}", kind="tag", values=(f"t{i}",), created_at=time.time()))
        recent = await log.recent(3)
        assert [p.id for _, p in recent] == ["p3", "p2", "p1"]
        assert recent[0][1].values == ("t3",) and recent[0][1].seq == 4
    finally:
        await log.close()
        redis.kill()
