"""Metrics and access logs: every service's /metrics moves with the traffic it saw; one JSON line per edge request."""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from balancer.router import create_app as create_router
from balancer.router_settings import RouterSettings
from cdn.access_log import ACCESS_LOGGER, StdoutLines
from cdn import worker_metrics
from edge.app import Edge, create_app as create_edge
from edge.metrics import GcPauses
from edge.settings import EdgeSettings
from origin_mock.app import create_app as create_origin
from origin_mock.settings import OriginSettings
from purge_api.app import create_app as create_purge_api
from purge_api.log import MemoryPurgeLog
from purge_api.metrics import PurgeApiMetrics
from purge_api.settings import PurgeApiSettings
from tests.scripted_origin import Answer, ScriptedOrigin
from tests.servers import ThreadServer, free_port

HOST = "shop.example"
TOKEN = "purge-secret"
BODY = b"x" * 1000
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of a metrics endpoint, parsed by prometheus-client: (name, labels) -> value."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until `condition()` holds; generous, since the machine is shared and noisy."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@dataclass
class Site:
    origin: ScriptedOrigin
    purge_log: MemoryPurgeLog
    edge: Edge
    edge_url: str
    api_url: str

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(self.edge_url + path, headers={"Host": HOST, **headers}, timeout=10)

    def metrics(self) -> Samples:
        return scrape(self.edge_url + "/_edge/metrics")


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """A scripted origin, the purge API and one edge sharing an in-process purge log; access logs off."""
    origin = ScriptedOrigin()
    purge_log = MemoryPurgeLog()
    with ThreadServer(origin) as origin_server:
        edge = create_edge(EdgeSettings(origin=origin_server.url, id="eu-1", region="eu-west", heartbeat_interval=0.2,
                                        access_log=False, shield={"sizes": {"max_url_length": 200}}), purge_log)
        api = create_purge_api(PurgeApiSettings(token=TOKEN), purge_log)
        with ThreadServer(api) as api_server, ThreadServer(edge, proxy=True) as edge_server:
            yield Site(origin, purge_log, edge, edge_server.url, api_server.url)


def cacheable(site: Site, path: str, cache_control: str = "max-age=60") -> None:
    site.origin.route(path, Answer(headers=[("cache-control", cache_control)], body=BODY))


# -- edge ---------------------------------------------------------------------
def test_a_miss_counts_a_miss_an_upstream_fetch_and_a_stored_object(site: Site) -> None:
    cacheable(site, "/miss")
    before = site.metrics()
    assert "fwd=miss" in site.get("/miss").headers["cache-status"]
    after = site.metrics()
    labels = {"edge": "eu-1", "region": "eu-west"}
    assert value(after, "cdn_edge_requests_total", cache="miss", **labels) == value(before, "cdn_edge_requests_total", cache="miss") + 1
    assert value(after, "cdn_edge_requests_total", cache="hit") == value(before, "cdn_edge_requests_total", cache="hit")
    assert value(after, "cdn_edge_upstream_response_seconds_count", upstream="origin") == (
        value(before, "cdn_edge_upstream_response_seconds_count", upstream="origin") + 1)
    assert value(after, "cdn_edge_upstream_bytes_total") - value(before, "cdn_edge_upstream_bytes_total") == len(BODY)
    assert value(after, "cdn_edge_served_bytes_total", source="upstream") - value(
        before, "cdn_edge_served_bytes_total", source="upstream") == len(BODY)
    assert value(after, "cdn_edge_store_objects", **labels) == value(before, "cdn_edge_store_objects") + 1
    assert value(after, "cdn_edge_store_bytes") > value(before, "cdn_edge_store_bytes") + len(BODY)


def test_a_hit_counts_a_hit_and_cache_bytes_but_no_upstream_fetch(site: Site) -> None:
    cacheable(site, "/hit")
    site.get("/hit")
    before = site.metrics()
    assert "hit" in site.get("/hit").headers["cache-status"]
    after = site.metrics()
    assert value(after, "cdn_edge_requests_total", cache="hit") == value(before, "cdn_edge_requests_total", cache="hit") + 1
    assert value(after, "cdn_edge_requests_total", cache="miss") == value(before, "cdn_edge_requests_total", cache="miss")
    assert value(after, "cdn_edge_served_bytes_total", source="cache") - value(
        before, "cdn_edge_served_bytes_total", source="cache") == len(BODY)
    assert value(after, "cdn_edge_upstream_response_seconds_count") == value(before, "cdn_edge_upstream_response_seconds_count")
    assert value(after, "cdn_edge_counters_total", counter="hit") == site.edge.counters["hit"]


def test_store_gauges_match_the_store(site: Site) -> None:
    for i in range(3):
        site.origin.route(f"/gauge-{i}", Answer(headers=[("cache-control", "max-age=60"), ("surrogate-key", f"gauges g{i}")],
                                                body=BODY))
        site.get(f"/gauge-{i}")
    samples = site.metrics()
    assert value(samples, "cdn_edge_store_tags") >= 4
    assert value(samples, "cdn_edge_store_objects") == len(site.edge.store)
    assert value(samples, "cdn_edge_store_bytes") == site.edge.store.size
    assert value(samples, "cdn_edge_store_capacity_bytes") == site.edge.settings.cache_size
    assert value(samples, "cdn_edge_store_tags") == site.edge.store.tag_count()


def test_garbage_collection_pauses_are_observed_by_generation_while_the_edge_runs(site: Site) -> None:
    # Every request waits while Python collects, and a full collection visits every cached entry.
    before = site.metrics()
    gc.collect(2)
    gc.collect(0)
    after = site.metrics()
    for generation in ("0", "2"):
        count = "cdn_edge_gc_pause_seconds_count"
        assert value(after, count, generation=generation, edge="eu-1") >= value(before, count, generation=generation) + 1
    assert value(after, "cdn_edge_gc_pause_seconds_sum", generation="2") > value(before, "cdn_edge_gc_pause_seconds_sum",
                                                                                  generation="2")
    assert site.edge.metrics.gc_pauses in gc.callbacks


def test_a_gc_pause_goes_to_its_bucket_and_a_stop_seen_without_its_start_is_not_counted(monkeypatch) -> None:
    clock = iter([10.0, 10.003])
    monkeypatch.setattr("edge.metrics.time.perf_counter", lambda: next(clock))
    pauses = GcPauses(("eu-1", "eu-west"))
    pauses("stop", {"generation": 2})  # its start came before the edge watched: no pause to measure
    pauses("start", {"generation": 1})
    pauses("stop", {"generation": 1})
    samples = {(s.name, s.labels.get("generation"), s.labels.get("le")): s.value
               for family in pauses.collect() for s in family.samples}
    assert samples[("cdn_edge_gc_pause_seconds_count", "1", None)] == 1
    assert samples[("cdn_edge_gc_pause_seconds_sum", "1", None)] == pytest.approx(0.003)
    assert samples[("cdn_edge_gc_pause_seconds_bucket", "1", "0.0025")] == 0
    assert samples[("cdn_edge_gc_pause_seconds_bucket", "1", "0.005")] == 1
    assert samples[("cdn_edge_gc_pause_seconds_bucket", "1", "+Inf")] == 1
    assert samples[("cdn_edge_gc_pause_seconds_count", "2", None)] == 0


def as_worker(monkeypatch: pytest.MonkeyPatch, folder: Path, number: int) -> None:
    """What the supervisor tells a worker's process: which worker it is, and the folder they share."""
    monkeypatch.setattr(worker_metrics, "_this_worker", worker_metrics.Worker(str(folder), number))


def series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, sorted labels) -> value of every sample in a Prometheus text; each must be there once."""
    samples = [((s.name, tuple(sorted(s.labels.items()))), s.value)
               for family in text_string_to_metric_families(text) for s in family.samples]
    assert len(dict(samples)) == len(samples), "a series twice"
    return dict(samples)


def test_a_scrape_serves_the_fellow_workers_metrics_and_leaves_out_a_dead_ones(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # With workers > 1 a scrape reaches one of them: it must not show that one alone.
    edges = []
    for number in range(3):
        as_worker(monkeypatch, tmp_path, number)
        edges.append(create_edge(EdgeSettings(origin="http://127.0.0.1:9", id=f"eu-1.{number}")))
    edges[1].count("hit", 5)
    edges[2].count("hit", 7)
    for edge in edges[1:]:
        edge.metrics.snapshots.write(edge.metrics.render_own())
    dead = tmp_path / "eu-1.2.prom"
    os.utime(dead, (time.time() - 60, time.time() - 60))  # not renewed for a minute: its worker died
    text = edges[0].metrics.render().decode()
    scraped = series(text)
    assert all("edge" in dict(labels) for _, labels in scraped)  # each worker's series are its own
    hits = {dict(labels)["edge"]: value for (name, labels), value in scraped.items()
            if name == "cdn_edge_requests_total" and ("cache", "hit") in labels}
    assert hits == {"eu-1.0": 0, "eu-1.1": 5}  # the dead worker's left out
    assert {dict(labels)["edge"] for name, labels in scraped if name == "cdn_access_log_dropped_total"} == {
        "eu-1.0", "eu-1.1"}
    assert text.count("# TYPE cdn_edge_requests_total counter") == 1
    assert text.count("# TYPE cdn_edge_gc_pause_seconds histogram") == 1


def test_purge_api_workers_series_carry_their_worker_and_are_never_added_up(tmp_path: Path) -> None:
    # A worker that restarts must reset its own counters only: a sum that fell would read as a reset of all.
    first, second = PurgeApiMetrics(worker_metrics.Worker(str(tmp_path), 0)), PurgeApiMetrics(
        worker_metrics.Worker(str(tmp_path), 1))
    first.logged.labels("tag", "false").inc(2)
    second.logged.labels("tag", "false").inc(3)
    second.snapshots.write(second.render_own())
    text = first.render().decode()
    scraped = series(text)
    assert all("worker" in dict(labels) for _, labels in scraped)
    logged = {dict(labels)["worker"]: value for (name, labels), value in scraped.items()
              if name == "cdn_purge_api_purges_logged_total"}
    assert logged == {"0": 2, "1": 3}
    assert text.count("# TYPE cdn_purge_api_purges_logged_total counter") == 1
    alone = series(PurgeApiMetrics().render().decode())  # one process: no worker label, as before
    assert alone and not any("worker" in dict(labels) for _, labels in alone)


def test_a_worker_leaves_its_metrics_while_it_runs_and_takes_them_away_when_it_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    as_worker(monkeypatch, tmp_path, 0)
    edge = create_edge(EdgeSettings(origin="http://127.0.0.1:9", id="eu-1.0", access_log=False))
    with ThreadServer(edge):
        eventually(lambda: (tmp_path / "eu-1.0.prom").exists())
        assert "cdn_edge_requests_total" in (tmp_path / "eu-1.0.prom").read_text()
    assert list(tmp_path.iterdir()) == []


def test_a_supervisor_removes_the_folders_of_dead_supervisors_but_not_of_running_or_recent_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A supervisor killed with SIGKILL cannot remove its workers' folder: the next one started does.
    monkeypatch.setattr(worker_metrics.tempfile, "tempdir", str(tmp_path))
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(ended.stdout)
    long_ago = time.time() - 2 * worker_metrics.FOLDER_ABANDONED

    def folder(name: str, touched: float) -> Path:
        made = tmp_path / name
        made.mkdir()
        (made / "eu-1.0.prom").write_text("")
        for path in (made / "eu-1.0.prom", made):
            os.utime(path, (touched, touched))
        return made

    abandoned = folder(f"cdn-edge-workers-{dead_pid}-abc", long_ago)
    recent = folder(f"cdn-edge-workers-{dead_pid}-def", time.time())  # its pid may be another namespace's
    running = folder(f"cdn-edge-workers-{os.getpid()}-ghi", long_ago)
    other_service = folder(f"cdn-router-workers-{dead_pid}-jkl", long_ago)
    made = Path(worker_metrics.make_folder("edge"))
    assert made.parent == tmp_path and made.name.startswith(f"cdn-edge-workers-{os.getpid()}-")
    assert not abandoned.exists()
    assert recent.exists() and running.exists() and other_service.exists()


def test_an_edge_stops_watching_garbage_collections_when_it_stops() -> None:
    edge = create_edge(EdgeSettings(origin="http://127.0.0.1:9", access_log=False))
    with ThreadServer(edge):
        assert edge.metrics.gc_pauses in gc.callbacks
    assert edge.metrics.gc_pauses not in gc.callbacks


def test_a_purge_from_the_log_counts_as_applied_with_its_lag(site: Site) -> None:
    cacheable(site, "/purged")
    site.get("/purged")
    eventually(lambda: site.edge.listener is not None and site.edge.listener.connected)
    before = site.metrics()
    response = httpx.post(site.api_url + "/purges", params={"wait": "5"}, timeout=10,
                          headers={"Authorization": f"Bearer {TOKEN}"},
                          json={"kind": "url", "values": [f"http://{HOST}/purged"]})
    assert response.status_code == 200 and response.json()["complete"], response.text
    after = site.metrics()
    assert value(after, "cdn_edge_purges_applied_total") == value(before, "cdn_edge_purges_applied_total") + 1
    assert value(after, "cdn_edge_purged_objects_total") == value(before, "cdn_edge_purged_objects_total") + 1
    assert value(after, "cdn_edge_purge_lag_seconds_count") == value(before, "cdn_edge_purge_lag_seconds_count") + 1
    assert 0 <= value(after, "cdn_edge_purge_lag_seconds_sum") - value(before, "cdn_edge_purge_lag_seconds_sum") < 5
    assert value(after, "cdn_edge_store_objects") == value(before, "cdn_edge_store_objects") - 1


def test_stale_while_revalidate_counts_a_stale_answer_by_its_reason(site: Site) -> None:
    cacheable(site, "/swr", "max-age=0, stale-while-revalidate=60")
    site.get("/swr")
    before = site.metrics()
    assert "stale-while-revalidate" in site.get("/swr").headers["cache-status"]
    after = site.metrics()
    assert value(after, "cdn_edge_requests_total", cache="stale") == value(before, "cdn_edge_requests_total", cache="stale") + 1
    assert value(after, "cdn_edge_stale_served_total", reason="stale-while-revalidate") == (
        value(before, "cdn_edge_stale_served_total", reason="stale-while-revalidate") + 1)


def test_concurrent_misses_count_coalesced_waits(site: Site) -> None:
    site.origin.route("/slow", Answer(headers=[("cache-control", "max-age=60")], body=BODY, delay=0.5))
    before = site.metrics()
    threads = [threading.Thread(target=site.get, args=("/slow",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = site.metrics()
    assert site.origin.hits["/slow"] == 1
    waits = value(after, "cdn_edge_coalesced_waits_total") - value(before, "cdn_edge_coalesced_waits_total")
    hits = value(after, "cdn_edge_coalesced_hits_total") - value(before, "cdn_edge_coalesced_hits_total")
    assert waits == hits == 3
    assert value(after, "cdn_edge_requests_total", cache="collapsed") - value(
        before, "cdn_edge_requests_total", cache="collapsed") == 3


def test_refusals_and_shield_decisions_are_counted_by_reason_and_rule(site: Site) -> None:
    before = site.metrics()
    assert site.get("/" + "a" * 300).status_code == 414
    cacheable(site, "/decided")
    site.get("/decided")
    after = site.metrics()
    assert value(after, "cdn_edge_refused_total", reason="url-too-long") == value(
        before, "cdn_edge_refused_total", reason="url-too-long") + 1
    assert value(after, "cdn_edge_requests_total", cache="refused") == value(
        before, "cdn_edge_requests_total", cache="refused") + 1
    assert value(after, "cdn_edge_shield_decisions_total", rule="origin", outcome="allowed") == value(
        before, "cdn_edge_shield_decisions_total", rule="origin", outcome="allowed") + 1


def test_pool_member_gauges_show_an_ejected_member(site: Site) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    live = site.edge.settings.origin
    pool = {"members": [dead, live], "algorithm": "round_robin", "health": {"enabled": False},
            "passive": {"failures": 1, "backoff": 30, "max_backoff": 30}}
    edge = create_edge(EdgeSettings(origin=live, pool=pool, access_log=False))
    with ThreadServer(edge) as server:
        for i in range(4):
            cacheable(site, f"/pool-{i}")
            assert httpx.get(f"{server.url}/pool-{i}", headers={"Host": HOST}).status_code == 200
        samples = scrape(server.url + "/_edge/metrics")
    assert value(samples, "cdn_edge_pool_member_available", pool="origin", member=dead) == 0
    assert value(samples, "cdn_edge_pool_member_available", pool="origin", member=live) == 1
    assert value(samples, "cdn_edge_pool_member_in_flight", pool="origin", member=live) == 0


def test_an_unreachable_origin_counts_an_upstream_error_by_status() -> None:
    edge = create_edge(EdgeSettings(origin=f"http://127.0.0.1:{free_port()}", access_log=False))
    with ThreadServer(edge) as server:
        assert httpx.get(server.url + "/down", headers={"Host": HOST}).status_code == 502
        samples = scrape(server.url + "/_edge/metrics")
    assert value(samples, "cdn_edge_upstream_errors_total", status="502") == 1
    assert value(samples, "cdn_edge_requests_total", cache="miss") == 1


def test_metrics_can_be_switched_off() -> None:
    edge = create_edge(EdgeSettings(metrics=False, access_log=False))
    with ThreadServer(edge) as server:
        assert httpx.get(server.url + "/_edge/metrics").status_code == 404


# -- purge API ----------------------------------------------------------------
def test_purge_api_counts_purges_by_kind_status_reads_and_waits(site: Site) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = scrape(site.api_url + "/metrics")
    logged = httpx.post(site.api_url + "/purges", headers=auth, json={"kind": "tag", "values": ["t1"]}, timeout=10)
    assert logged.status_code == 202
    status = httpx.get(site.api_url + logged.json()["status_url"], params={"wait": "5"}, headers=auth, timeout=10)
    assert status.json()["complete"]
    assert httpx.get(site.api_url + "/purges/p-unknown", headers=auth).status_code == 404
    after = scrape(site.api_url + "/metrics")
    assert value(after, "cdn_purge_api_purges_logged_total", kind="tag", soft="false") == value(
        before, "cdn_purge_api_purges_logged_total", kind="tag", soft="false") + 1
    assert value(after, "cdn_purge_api_status_requests_total", outcome="complete") == value(
        before, "cdn_purge_api_status_requests_total", outcome="complete") + 1
    assert value(after, "cdn_purge_api_status_requests_total", outcome="not_found") == value(
        before, "cdn_purge_api_status_requests_total", outcome="not_found") + 1
    assert value(after, "cdn_purge_api_wait_seconds_count", outcome="complete") == value(
        before, "cdn_purge_api_wait_seconds_count", outcome="complete") + 1
    assert value(after, "cdn_purge_api_responses_total", method="POST", status="202") == value(
        before, "cdn_purge_api_responses_total", method="POST", status="202") + 1
    assert value(after, "cdn_purge_api_responses_total", method="GET", status="404") == value(
        before, "cdn_purge_api_responses_total", method="GET", status="404") + 1


# -- origin mock --------------------------------------------------------------
def test_origin_metrics_count_shop_requests_by_route_and_status_but_not_control_paths() -> None:
    with ThreadServer(create_origin(OriginSettings(products=5, assets=2))) as origin:
        assert httpx.get(origin.url + "/api/products/1").status_code == 200
        assert httpx.get(origin.url + "/api/products/2").status_code == 200
        assert httpx.get(origin.url + "/static/js/app-1.js").status_code in (200, 404)
        httpx.get(origin.url + "/_origin/stats")
        samples = scrape(origin.url + "/_origin/metrics")
    assert value(samples, "cdn_origin_requests_total", route="/api/products/{id}") == 2
    assert value(samples, "cdn_origin_requests_total", route="/static/js") == 1
    assert value(samples, "cdn_origin_requests_total") == 3
    assert value(samples, "cdn_origin_requests_by_method_total", method="GET") == 3
    assert value(samples, "cdn_origin_responses_total", status="200") >= 2
    assert value(samples, "cdn_origin_sent_bytes_total") > 0
    assert value(samples, "cdn_origin_reads_total", served_from="primary") == 2
    assert value(samples, "cdn_origin_in_flight") == 0


# -- front door ---------------------------------------------------------------
def test_router_metrics_count_requests_by_region_and_edge_and_show_edge_health(site: Site) -> None:
    settings = RouterSettings(edges=[{"url": site.edge_url, "id": "eu-1", "region": "eu-west"}],
                              health_interval=0.1, health_timeout=1.0, health_rise=1, health_fall=2)
    cacheable(site, "/routed")
    with ThreadServer(create_router(settings), proxy=True) as router:
        eventually(lambda: value(scrape(router.url + "/_router/metrics"), "cdn_router_edge_available", edge="eu-1") == 1)
        for _ in range(2):
            assert httpx.get(router.url + "/routed", headers={"Host": HOST}, timeout=10).status_code == 200
        samples = scrape(router.url + "/_router/metrics")
    assert value(samples, "cdn_router_requests_total") == 2
    assert value(samples, "cdn_router_routed_total", region="eu-west", edge="eu-1") == 2
    assert value(samples, "cdn_router_upstream_errors_total") == 0
    assert value(samples, "cdn_router_edge_in_flight", region="eu-west", edge="eu-1") == 0


# -- access log ---------------------------------------------------------------
def access_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def read_access_lines(capsys: pytest.CaptureFixture[str], count: int, timeout: float = 10.0) -> list[dict]:
    """The next `count` access log lines (a thread of their own writes them, a moment after the response)."""
    text = ""
    deadline = time.monotonic() + timeout
    while len(access_lines(text)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
        text += capsys.readouterr().out
    return access_lines(text)


@pytest.mark.parametrize("proxy", [False, True])  # True: on the edge's own server, which answers hits as it parses
def test_access_log_writes_one_json_line_per_request(capsys: pytest.CaptureFixture[str], proxy: bool) -> None:
    origin = ScriptedOrigin()
    origin.route("/logged", Answer(headers=[("cache-control", "max-age=60")], body=BODY))
    with ThreadServer(origin) as origin_server:
        edge = create_edge(EdgeSettings(origin=origin_server.url, id="eu-2", region="eu-west", access_log=True))
        with ThreadServer(edge, proxy=proxy) as server:
            capsys.readouterr()
            for _ in range(2):
                httpx.get(server.url + "/logged?v=1", headers={"Host": HOST})
            httpx.head(server.url + "/logged?v=1", headers={"Host": HOST})
            lines = read_access_lines(capsys, 3)
    assert [line["cache"].split(";")[0] for line in lines] == ["fwd=miss", "hit", "hit"]
    miss, hit, head = lines
    assert set(miss) == {"time", "edge", "region", "client", "method", "host", "target", "status", "cache", "bytes",
                         "duration_ms", "origin_ms"}
    assert miss["edge"] == "eu-2" and miss["region"] == "eu-west" and miss["client"] == "127.0.0.1"
    assert (miss["method"], miss["host"], miss["target"], miss["status"]) == ("GET", HOST, "/logged?v=1", 200)
    assert miss["bytes"] == hit["bytes"] == len(BODY) and head["bytes"] == 0
    assert miss["origin_ms"] > 0 and miss["duration_ms"] >= miss["origin_ms"]
    assert hit["origin_ms"] is None and hit["duration_ms"] > 0
    assert set(hit) == set(head) == set(miss) and hit["client"] == "127.0.0.1" and hit["target"] == "/logged?v=1"
    assert head["method"] == "HEAD"
    assert miss["time"].endswith("+00:00")


def test_no_access_log_line_when_switched_off(capsys: pytest.CaptureFixture[str]) -> None:
    edge = create_edge(EdgeSettings(origin=f"http://127.0.0.1:{free_port()}", access_log=False))
    assert edge.access_log is None
    with ThreadServer(edge) as server:
        capsys.readouterr()
        httpx.get(server.url + "/quiet", headers={"Host": HOST})
        assert read_access_lines(capsys, 1, timeout=0.5) == []


def test_an_operator_who_raises_the_access_loggers_level_turns_access_logs_off() -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        assert create_edge(EdgeSettings(access_log=True)).access_log is None
    finally:
        logger.setLevel(level)


class StalledStdout:
    """A stdout whose reader went away: every write blocks until `resume` is set."""

    def __init__(self) -> None:
        self.stalled = threading.Event()
        self.resume = threading.Event()
        self.written: list[str] = []

    def write(self, text: str) -> int:
        self.stalled.set()
        self.resume.wait()
        self.written.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_stalled_stdout_costs_dropped_lines_not_a_blocked_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    stdout = StalledStdout()
    monkeypatch.setattr("sys.stdout", stdout)
    handler = StdoutLines(backlog=10)
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 0, "line", None, None)
    handler.handle(record)
    assert stdout.stalled.wait(5), "the writer never wrote"
    started = time.monotonic()
    for _ in range(25):
        handler.handle(record)
    assert time.monotonic() - started < 1.0
    assert handler.dropped == 15
    stdout.resume.set()
    handler.flush()
    assert handler.unwritten == 0
    assert "".join(stdout.written) == "line\n" * 11
