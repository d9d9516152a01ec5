"""`cdn cluster`: topology files, the plan they make, and a real cluster of processes brought up and down."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cdn import cluster
from cdn.cli import main
from cdn.cluster import ClusterError, Topology, load_topology, loopback_network, plan, redis_from_url
from tests.redis_server import RedisServer
from tests.servers import ROOT, free_port, wait_for_port

TINY = """
[regions.eu-west]
latitude = 53.35
longitude = -6.26

[[origins]]
id = "origin"

[purge-api]
token = "cluster-test-token"

[edge]
heartbeat_interval = 0.5

[router]
registry_interval = 0.5
health_interval = 0.5

[[edges]]
id = "edge-1"
region = "eu-west"
"""
TOKEN = "cluster-test-token"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def topology_from(text: str, tmp_path: Path) -> Topology:
    return load_topology(write(tmp_path / "topology.toml", text))


def local_plan(topology: Topology) -> list[cluster.Process]:
    """The plan on loopback, with made-up ports (nothing is started)."""
    ports = {name: 20001 + i for i, (name, _) in enumerate(topology.services())}
    return plan(topology, "redis://127.0.0.1:6390/0", loopback_network(topology, ports))


def cdn(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdn", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def cdn_here(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`cdn ARGS` in this process: (exit status, stdout, stderr)."""
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def assert_all_gone(state: dict[str, Any]) -> None:
    """No process of the state's groups runs and nothing listens on its ports."""
    entries = state["processes"]
    deadline = time.monotonic() + 5
    while cluster.running(entries) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cluster.running(entries) == []  # exited (a detached cluster's zombies are init's to reap)
    for e in entries:
        assert not listening(e["port"]), f"{e['name']} still listens on {e['port']}"


# -- topology and plan ---------------------------------------------------------


def test_shipped_topology_plans_every_service_with_its_own_port() -> None:
    topology = load_topology(ROOT / "compose" / "topology.toml")
    processes = local_plan(topology)
    assert [p.service for p in processes].count("edge") == len(topology.edges)
    assert len({p.port for p in processes}) == len(processes)
    for p in processes:
        assert p.env[cluster.env_prefix(cluster.settings_class(p.service)) + "HOST"] == "127.0.0.1"


def test_edges_get_id_region_coordinates_redis_and_advertise_url(tmp_path: Path) -> None:
    edge = next(p for p in local_plan(topology_from(TINY, tmp_path)) if p.service == "edge")
    assert edge.env["CDN_EDGE_ID"] == "edge-1"
    assert edge.env["CDN_EDGE_REGION"] == "eu-west"
    assert (edge.env["CDN_EDGE_LATITUDE"], edge.env["CDN_EDGE_LONGITUDE"]) == ("53.35", "-6.26")
    assert edge.env["CDN_EDGE_REDIS"] == "redis://127.0.0.1:6390/0"
    assert edge.env["CDN_EDGE_ADVERTISE_URL"] == edge.url == f"http://127.0.0.1:{edge.port}"
    assert edge.env["CDN_EDGE_HEARTBEAT_INTERVAL"] == "0.5"


def test_shield_parents_become_parent_urls(tmp_path: Path) -> None:
    text = TINY + '\n[[edges]]\nid = "child"\nregion = "eu-west"\nparents = ["edge-1"]\n'
    processes = {p.name: p for p in local_plan(topology_from(text, tmp_path))}
    assert json.loads(processes["child"].env["CDN_EDGE_PARENTS"]) == [processes["edge-1"].url]
    assert "CDN_EDGE_PARENTS" not in processes["edge-1"].env


def test_several_origins_share_redis_and_become_the_edges_pool(tmp_path: Path) -> None:
    text = TINY.replace('[[origins]]\nid = "origin"', '[[origins]]\nid = "origin-a"\n[[origins]]\nid = "origin-b"')
    processes = {p.name: p for p in local_plan(topology_from(text, tmp_path))}
    pool = json.loads(processes["edge-1"].env["CDN_EDGE_POOL"])
    assert pool["members"] == [processes["origin-a"].url, processes["origin-b"].url]
    assert processes["origin-a"].env["CDN_ORIGIN_REDIS"] == processes["origin-b"].env["CDN_ORIGIN_REDIS"]


def test_an_origin_run_elsewhere_is_not_started(tmp_path: Path) -> None:
    text = TINY.replace('id = "origin"', 'id = "origin"\nurl = "https://shop.example/"')
    processes = local_plan(topology_from(text, tmp_path))
    assert "origin" not in {p.service for p in processes}
    assert next(p for p in processes if p.service == "edge").env["CDN_EDGE_ORIGIN"] == "https://shop.example"


def test_the_origin_sends_its_change_purges_to_the_purge_api(tmp_path: Path) -> None:
    processes = {p.name: p for p in local_plan(topology_from(TINY, tmp_path))}
    assert processes["origin"].env["CDN_ORIGIN_PURGE_API"] == processes["purge-api"].url
    assert processes["origin"].env["CDN_ORIGIN_PURGE_TOKEN"] == TOKEN


@pytest.mark.parametrize("change, message", [
    (('region = "eu-west"', 'region = "mars"'), "region 'mars' is not under [regions]"),
    (('[[edges]]\nid = "edge-1"', '[[edges]]\nid = "router"'), "names must be unique"),
    (('region = "eu-west"\n', 'region = "eu-west"\nparents = ["edge-1"]\n'), "parents must be other edges"),
    (("heartbeat_interval = 0.5", "port = 1234"), "'port' is set by the launcher"),
    (("heartbeat_interval = 0.5", "heartbeat_intervall = 0.5"), "edge has no setting 'heartbeat_intervall'"),
    (("heartbeat_interval = 0.5", "heartbeat_interval = -1"), "heartbeat_interval"),
    (('id = "edge-1"', 'id = "Edge_1"'), "edges.0.id"),
])
def test_a_bad_topology_is_refused_with_what_is_wrong(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(ClusterError, match=re.escape(message)):
        local_plan(topology_from(TINY.replace(*change), tmp_path))


def test_a_parent_cycle_is_refused(tmp_path: Path) -> None:
    text = TINY.replace('region = "eu-west"\n', 'region = "eu-west"\nparents = ["edge-2"]\n')
    text += '\n[[edges]]\nid = "edge-2"\nregion = "eu-west"\nparents = ["edge-1"]\n'
    with pytest.raises(ClusterError, match="lead back to it"):
        topology_from(text, tmp_path)


def test_a_missing_topology_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cdn_here(capsys, "cluster", "up", str(tmp_path / "nope.toml"), "--state", str(tmp_path / "s.json"))
    assert status == 1
    assert "nope.toml" in err and "No such file" in err


def test_up_fails_at_once_when_the_given_redis_does_not_answer(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state.json"
    status, _, err = cdn_here(capsys, "cluster", "up", str(write(tmp_path / "t.toml", TINY)),
                              "--redis", f"redis://127.0.0.1:{free_port()}/0", "--state", str(state))
    assert status == 1
    assert "no Redis answers" in err
    assert not state.exists()


def test_status_and_down_without_a_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state.json")
    assert cdn_here(capsys, "cluster", "status", "--state", state)[0] == 1
    status, out, _ = cdn_here(capsys, "cluster", "down", "--state", state)
    assert status == 0 and "nothing to stop" in out


# -- Redis through Sentinel ----------------------------------------------------


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A Redis master and one Sentinel monitoring it as `cdn-master`: (sentinel URL, master URL)."""
    master = RedisServer(tmp_path).start()
    port = free_port()
    config = write(tmp_path / "sentinel.conf", f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                                               f"sentinel monitor cdn-master 127.0.0.1 {master.port} 1\n")
    process = subprocess.Popen([master.binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f"redis+sentinel://127.0.0.1:{port}/cdn-master/2", master.url.rsplit("/", 1)[0] + "/2"
    finally:
        process.terminate()
        process.wait(timeout=10)
        master.stop()


async def test_a_sentinel_url_reaches_the_master_sentinel_names(sentinel: tuple[str, str]) -> None:
    sentinel_url, master_url = sentinel
    client = redis_from_url(sentinel_url, socket_timeout=2, decode_responses=True)
    direct = redis_from_url(master_url, decode_responses=True)
    try:
        await client.set("cdn:sentinel-test", "through sentinel")
        assert await direct.get("cdn:sentinel-test") == "through sentinel"
    finally:
        await client.aclose()
        await direct.aclose()


def test_a_sentinel_url_names_its_sentinels_service_database_and_password() -> None:
    client = redis_from_url("redis+sentinel://:secret@sentinel-a:26380,[::1],sentinel-c/cdn-master/3")
    pool = client.connection_pool
    assert pool.service_name == "cdn-master"
    assert [(c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
            for c in pool.sentinel_manager.sentinels] == [("sentinel-a", 26380), ("::1", 26379), ("sentinel-c", 26379)]
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "secret"
    asyncio.run(client.aclose())


def test_a_sentinel_url_without_a_service_is_refused() -> None:
    with pytest.raises(ValueError, match="service"):
        redis_from_url("redis+sentinel://127.0.0.1:26379")


# -- a real cluster ------------------------------------------------------------


@pytest.fixture(scope="module")
def live_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`cdn cluster up --detach` of the tiny topology; brought down afterwards if a test did not."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run ./dev setup (it installs it)")
    directory = tmp_path_factory.mktemp("cluster")
    state_path = directory / "state.json"
    result = cdn("cluster", "up", str(write(directory / "tiny.toml", TINY)), "--detach", "--state", str(state_path))
    assert result.returncode == 0, result.stdout + result.stderr
    state = json.loads(state_path.read_text())
    yield {"path": state_path, "stdout": result.stdout, **state}
    if state_path.exists():
        cdn("cluster", "down", "--state", str(state_path))


def test_up_prints_the_urls_and_the_state_file(live_cluster: dict[str, Any]) -> None:
    assert live_cluster["urls"]["front_door"] in live_cluster["stdout"]
    assert live_cluster["urls"]["purge_api"] in live_cluster["stdout"]
    assert str(live_cluster["path"]) in live_cluster["stdout"]
    assert [e["name"] for e in live_cluster["processes"]] == ["redis", "origin", "purge-api", "edge-1", "router"]
    assert live_cluster["redis"]["own"] and not live_cluster["redis"]["url"].endswith(":6379/0")


def test_status_shows_every_process_healthy(live_cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = cdn_here(capsys, "cluster", "status", "--state", str(live_cluster["path"]))
    assert status == 0, out
    for e in live_cluster["processes"]:
        assert re.search(rf"{e['name']}\s.*healthy", out)


def test_a_request_through_the_front_door_misses_then_hits(live_cluster: dict[str, Any]) -> None:
    front_door = live_cluster["urls"]["front_door"]
    first = httpx.get(front_door + "/api/products/11")
    second = httpx.get(front_door + "/api/products/11")
    assert first.status_code == second.status_code == 200
    assert "fwd=miss" in first.headers["cache-status"]
    assert "hit" in second.headers["cache-status"]
    assert second.headers["x-routed-to"].startswith("edge-1; region=eu-west")


def test_a_purge_through_the_purge_api_completes_on_every_edge(live_cluster: dict[str, Any]) -> None:
    front_door, purge_api = live_cluster["urls"]["front_door"], live_cluster["urls"]["purge_api"]
    httpx.get(front_door + "/api/products/12")
    assert "hit" in httpx.get(front_door + "/api/products/12").headers["cache-status"]
    answer = httpx.post(purge_api + "/purges", params={"wait": "5"}, json={"kind": "tag", "values": ["product-12"]},
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert answer.status_code in (200, 202), answer.text
    assert answer.json()["complete"] is True
    assert set(answer.json()["applied"]) == {"edge-1"}
    assert "fwd=miss" in httpx.get(front_door + "/api/products/12").headers["cache-status"]


def test_compose_health_checks_pass_against_the_same_services(live_cluster: dict[str, Any]) -> None:
    services = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())["services"]
    ports = {e["service"]: e["port"] for e in live_cluster["processes"]}
    for name, service in services.items():
        command = service["healthcheck"]["test"]
        if command[1] != "python":
            continue
        code = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{ports[service['command'][0]]}", command[3])
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, f"{name}: {result.stderr}"


def test_up_refuses_while_the_cluster_runs(live_cluster: dict[str, Any], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cdn_here(capsys, "cluster", "up", str(write(tmp_path / "t.toml", TINY)),
                              "--state", str(live_cluster["path"]))
    assert status == 1
    assert "already running" in err


def test_down_leaves_no_process_and_no_port(live_cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cdn_here(capsys, "cluster", "down", "--state", str(live_cluster["path"]))
    assert status == 0, err
    assert f"stopped {len(live_cluster['processes'])} processes" in out
    assert "SIGKILL" not in out
    assert not live_cluster["path"].exists()
    assert_all_gone(live_cluster)


def test_interrupting_a_foreground_cluster_stops_everything(tmp_path: Path) -> None:
    state_path = tmp_path / "state.json"
    up = subprocess.Popen([sys.executable, "-m", "cdn", "cluster", "up", str(write(tmp_path / "t.toml", TINY)),
                           "--state", str(state_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and up.poll() is None:
            if state_path.exists() and json.loads(state_path.read_text()).get("controller"):
                break
            time.sleep(0.1)
        assert up.poll() is None, up.stdout.read() if up.stdout else ""
        state = json.loads(state_path.read_text())
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=30)
    finally:
        if up.poll() is None:
            up.kill()
            cdn("cluster", "down", "--state", str(state_path))
    assert up.returncode == 0, output
    assert "stopped." in output
    assert not state_path.exists()
    assert_all_gone(state)
