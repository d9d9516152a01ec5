"""An edge killed mid-request: real processes on loopback (edges, front door) around a real Redis."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from purge_api.app import create_app as create_purge_api
from purge_api.settings import PurgeApiSettings
from tests.redis_server import RedisServer, wait_until
from tests.scripted_origin import Answer, ScriptedOrigin
from tests.servers import ThreadServer, cdn_service

TOKEN = "fault-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOST = "shop.example"
CACHEABLE = [("Cache-Control", "max-age=600"), ("Surrogate-Key", "page")]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


def live_edges(client: httpx.Client, api: str) -> set[str]:
    return {e["id"] for e in client.get(api + "/edges", headers=AUTH).json()["edges"] if e["live"]}


def test_an_edge_killed_mid_request_is_routed_around_and_no_purge_waits_for_it(redis: RedisServer) -> None:
    origin = ScriptedOrigin()
    origin.route("/page", Answer(headers=CACHEABLE, body=b"v1"))
    origin.route("/slow", Answer(headers=[("Cache-Control", "no-store")], body=b"late", delay=5))
    api = create_purge_api(PurgeApiSettings(redis=redis.url, token=TOKEN, live_after=1.0))
    common = ["--redis", redis.url, "--heartbeat-interval", "0.2", "--no-access-log"]
    with ThreadServer(origin) as origin_server, ThreadServer(api) as api_server, \
            cdn_service("edge", "--origin", origin_server.url, "--id", "doomed", *common) as (doomed, doomed_url), \
            cdn_service("edge", "--origin", origin_server.url, "--id", "survivor", *common) as (_, survivor_url), \
            cdn_service("router", "--redis", redis.url, "--live-after", "1.0", "--registry-interval", "0.1",
                    "--health-interval", "0.2") as (_, router_url), \
            httpx.Client(timeout=15) as client:
        wait_until(lambda: live_edges(client, api_server.url) == {"doomed", "survivor"}, 15, "both edges live")
        # The front door knows both (its health checks pass) before one is killed.
        wait_until(lambda: client.get(router_url + "/_router/health").json()["regions"].get("local", {}).get(
            "available") == 2, 15, "the front door sees both edges healthy")

        in_flight: list[BaseException | httpx.Response] = []

        def slow_request() -> None:
            try:
                in_flight.append(client.get(doomed_url + "/slow", headers={"Host": HOST}))
            except httpx.HTTPError as exc:
                in_flight.append(exc)

        thread = threading.Thread(target=slow_request)
        thread.start()
        wait_until(lambda: origin.hits.get("/slow", 0) == 1, 10, "the slow request reached the origin")
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=10)
        thread.join(timeout=20)
        assert len(in_flight) == 1 and isinstance(in_flight[0], httpx.HTTPError), in_flight  # cut off, not hung

        # The front door routes every request to the survivor, retrying those that meet the dead edge.
        answers = [client.get(router_url + f"/page?n={i}", headers={"Host": HOST}) for i in range(30)]
        assert all(a.status_code == 200 and a.content == b"v1" for a in answers), [a.status_code for a in answers]
        assert all(a.headers["x-served-by"].startswith("survivor") for a in answers)

        # The purge API stops counting the dead edge as live and does not wait for it.
        wait_until(lambda: live_edges(client, api_server.url) == {"survivor"}, 15, "the killed edge not live")
        answer = client.post(api_server.url + "/purges", params={"wait": "10"}, headers=AUTH,
                             json={"kind": "tag", "values": ["page"]}).json()
        assert answer["complete"] is True and set(answer["applied"]) == {"survivor"}, answer
        assert "doomed" not in answer["pending"]
        origin.route("/page", Answer(headers=CACHEABLE, body=b"v2"))
        assert client.get(survivor_url + "/page", headers={"Host": HOST}).content == b"v2"
