"""Running a service in several worker processes, and on granian: real processes on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cdn.cli import main
from tests.scripted_origin import Answer
from tests.servers import cdn_process, cdn_service, free_port, wait_for_port
from tests.test_purge import AUTH, HOST, TOKEN, Fleet, start_fleet

CACHEABLE = [("Cache-Control", "max-age=600"), ("Surrogate-Key", "page")]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    yield from start_fleet(tmp_path, edges=0)


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def wait_until(condition, timeout: float = 20.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def served_by(url: str, path: str) -> tuple[str, str]:
    """One request on a new connection: the Cache-Status of the answer and the edge that gave it."""
    with httpx.Client(timeout=10) as client:
        response = client.get(url + path, headers={"Host": HOST})
    assert response.status_code == 200, response.text
    cache_status = response.headers["cache-status"]
    return cache_status, cache_status.split(";")[0]


def test_each_edge_worker_is_an_edge_of_its_own_and_applies_every_purge(fleet: Fleet) -> None:
    assert fleet.origin is not None
    fleet.origin.route("/page", Answer(headers=CACHEABLE, body=b"v1"))
    with cdn_process("edge", "--origin", fleet.origin_url, "--redis", fleet.redis.url, "--id", "eu-1",
                     "--workers", "2", "--heartbeat-interval", "0.2", "--no-access-log") as url:
        fleet.wait_for_live_edges(2)
        ids = {e["id"] for e in fleet.client.get(fleet.api_url + "/edges", headers=AUTH).json()["edges"]}
        assert ids == {"eu-1.0", "eu-1.1"}
        seen = {served_by(url, "/page")[1] for _ in range(20)}
        assert seen <= {"eu-1.0", "eu-1.1"}

        def scrape_shows_both() -> bool:  # a new connection each: whichever worker takes it
            text = httpx.get(url + "/_edge/metrics", timeout=10).text
            return all(f'cdn_edge_store_objects{{edge="{worker}"' in text for worker in ("eu-1.0", "eu-1.1"))

        wait_until(scrape_shows_both, what="both workers' metrics in a scrape")
        assert all(scrape_shows_both() for _ in range(6))
        answer = fleet.purge({"kind": "tag", "values": ["page"]}).json()
        assert answer["complete"] is True, answer
        assert set(answer["applied"]) == {"eu-1.0", "eu-1.1"}
        fleet.origin.route("/page", Answer(headers=CACHEABLE, body=b"v2"))
        with httpx.Client(timeout=10) as client:
            for _ in range(10):  # whichever worker answers, the purge reached it
                assert client.get(url + "/page", headers={"Host": HOST, "Connection": "close"}).content == b"v2"


def test_the_purge_apis_metrics_show_every_worker_whichever_is_scraped(fleet: Fleet) -> None:
    with cdn_process("purge-api", "--redis", fleet.redis.url, "--token", TOKEN, "--workers", "2",
                     "--redis-prefix", "workers:") as url:
        for n in range(8):  # a new connection each: the kernel picks the worker
            answer = httpx.post(url + "/purges", json={"kind": "tag", "values": [f"t{n}"]}, headers=AUTH, timeout=10)
            assert answer.status_code in (200, 202), answer.text

        def scraped() -> tuple[set[str], float]:
            """The workers a scrape shows (every series carries its worker), and the purges they logged."""
            text = httpx.get(url + "/metrics", timeout=10).text
            samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
            return ({s.labels["worker"] for s in samples},
                    sum(s.value for s in samples if s.name == "cdn_purge_api_purges_logged_total"))

        wait_until(lambda: scraped() == ({"0", "1"}, 8), what="both workers, and every purge, in a scrape")
        assert [scraped() for _ in range(6)] == [({"0", "1"}, 8)] * 6


def test_a_worker_that_dies_is_started_again_and_sigterm_stops_them_all(fleet: Fleet) -> None:
    port = free_port()
    with cdn_service("edge", "--origin", fleet.origin_url, "--redis", fleet.redis.url, "--id", "eu-2",
                     "--workers", "2", "--no-access-log", port=port) as (process, url):
        parent = process.pid
        workers = wait_until(lambda: len(children(parent)) == 2 and children(parent), what="two workers")
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = wait_until(lambda: (now := children(parent)) and victim not in now and len(now) == 2 and now,
                              what="the dead worker replaced")
        assert len(replaced - workers) == 1
        wait_for_port(port)
        assert httpx.get(url + "/_edge/health", timeout=10).status_code == 200
        os.kill(parent, signal.SIGTERM)
        wait_until(lambda: not os.path.exists(f"/proc/{parent}") or _is_zombie(parent), what="the parent exited")
        for pid in replaced:
            wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _is_zombie(pid), what=f"worker {pid} exited")


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)


def test_a_worker_stuck_in_its_shutdown_is_killed_and_the_supervisor_exits(fleet: Fleet) -> None:
    with cdn_service("edge", "--origin", fleet.origin_url, "--redis", fleet.redis.url, "--id", "eu-3",
                     "--workers", "2", "--no-access-log") as (process, _):
        workers = wait_until(lambda: len(children(process.pid)) == 2 and children(process.pid), what="two workers")
        stuck = min(workers)
        os.kill(stuck, signal.SIGSTOP)  # it cannot act on SIGTERM; only SIGKILL ends it
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0  # it exits once both are gone: the stuck one after STOP_GRACE
        assert all(wait_until(lambda pid=pid: gone(pid), what=f"worker {pid} gone") for pid in workers)


def test_workers_die_with_their_supervisor(fleet: Fleet) -> None:
    with cdn_service("edge", "--origin", fleet.origin_url, "--redis", fleet.redis.url, "--id", "eu-4",
                     "--workers", "2", "--no-access-log") as (process, _):
        workers = wait_until(lambda: len(children(process.pid)) == 2 and children(process.pid), what="two workers")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        assert all(wait_until(lambda pid=pid: gone(pid), what=f"worker {pid} gone") for pid in workers)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("service", ["edge", "purge-api"])
def test_workers_without_redis_are_refused_at_start_up(service: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([service, "--workers", "2"]) == 2
    assert "workers > 1 needs redis" in capsys.readouterr().err


def test_workers_run_on_uvicorn_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["router", "--workers", "2", "--server", "granian"]) == 2
    assert "workers > 1 runs on server 'uvicorn' only" in capsys.readouterr().err


def test_the_edge_serves_hits_on_granian(fleet: Fleet) -> None:
    assert fleet.origin is not None
    fleet.origin.route("/g", Answer(headers=CACHEABLE, body=b"granian"))
    with cdn_process("edge", "--origin", fleet.origin_url, "--server", "granian", "--id", "gr-1",
                     "--no-access-log") as url:
        first, _ = served_by(url, "/g")
        second, _ = served_by(url, "/g")
    assert "fwd=miss" in first and "; hit" in second, (first, second)


# An app answering with the module of the event loop it runs on.
LOOP_APP = """
import asyncio, sys
from cdn.serving import run_granian

async def app(scope, receive, send):
    if scope["type"] == "http":
        body = type(asyncio.get_running_loop()).__module__.encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

run_granian(app, "127.0.0.1", int(sys.argv[1]), "warning")
"""


def test_granian_runs_its_apps_on_uvloop() -> None:
    # asyncio's own loop costs granian a fifth of its hit rate (benchmarks/hit_bench.py).
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", LOOP_APP, str(port)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text.startswith("uvloop")
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0
