"""`cdn cluster`: run a whole CDN described by one topology file as local processes.

    topology.toml -> plan (one `Process` per service instance, its settings as `CDN_*` variables)
                  -> up: Redis (given, or our own), then every process on a free loopback port,
                         wait until each answers its health check, write the state file
                  -> down: stop every process group in the state file (SIGTERM, then SIGKILL)

The same plan with container addresses is what `compose/docker-compose.yml` must
describe (`tests/test_compose.py` compares them), so the local cluster and the
Compose deployment cannot drift apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cdn.config import ServiceSettings, SettingsError, env_prefix, load_settings
from cdn.redis_url import redis_from_url

DEFAULT_STATE = Path(".cache/cluster/state.json")
HEALTH_PATHS: dict[str, str] = {
    "origin": "/healthz",
    "purge-api": "/health",
    "edge": "/_edge/health",
    "router": "/_router/health",
}
# Settings the launcher derives from the topology; a topology that sets them itself is refused.
OWNED: dict[str, frozenset[str]] = {
    "origin": frozenset({"host", "port", "redis", "purge_api", "purge_token"}),
    "purge-api": frozenset({"host", "port", "redis"}),
    "edge": frozenset({"host", "port", "id", "region", "latitude", "longitude", "advertise_url", "redis",
                       "origin", "pool", "parents"}),
    "router": frozenset({"host", "port", "redis", "regions", "edges"}),
}
NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"  # a host name label: names double as Compose service names
RESERVED_NAMES = frozenset({"redis", "purge-api", "router"})
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL


class ClusterError(Exception):
    """The topology is invalid, or the cluster could not be started, found or stopped."""


def settings_class(service: str) -> type[ServiceSettings]:
    """The settings model of a `cdn` subcommand."""
    import importlib

    from cdn.cli import SERVICES

    module, _, name = SERVICES[service][0].partition(":")
    return getattr(importlib.import_module(module), name)


# -- the topology ---------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RegionSpec(_Spec):
    """Where a region is."""

    latitude: float = Field(..., ge=-90, le=90)
    longitude: float = Field(..., ge=-180, le=180)


class OriginSpec(_Spec):
    """One origin server: an origin mock we start, or (with `url`) a server that runs elsewhere."""

    id: str = Field(..., pattern=NAME)
    url: str | None = Field(None, pattern=r"^https?://[^/]+", description="an origin run elsewhere: not started")
    settings: dict[str, Any] = Field(default_factory=dict, description="this instance's settings, over [origin]")


class EdgeSpec(_Spec):
    """One edge: its id, region, where it is (default: its region), its shield parents and own settings."""

    id: str = Field(..., pattern=NAME)
    region: str = Field(..., pattern=NAME)
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)
    parents: list[str] = Field(default_factory=list, description="ids of edges this one fetches its misses from")
    settings: dict[str, Any] = Field(default_factory=dict, description="this edge's settings, over [edge]")


class Topology(_Spec):
    """Regions, origins and edges, plus settings for every instance of a service (`[edge]`, `[origin]`, ...)."""

    regions: dict[str, RegionSpec] = Field(..., min_length=1)
    origins: list[OriginSpec] = Field(..., min_length=1)
    edges: list[EdgeSpec] = Field(..., min_length=1)
    origin: dict[str, Any] = Field(default_factory=dict)
    purge_api: dict[str, Any] = Field(default_factory=dict, alias="purge-api")
    edge: dict[str, Any] = Field(default_factory=dict)
    router: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        names = [o.id for o in self.origins] + [e.id for e in self.edges]
        duplicates = sorted({n for n in names if names.count(n) > 1} | (set(names) & RESERVED_NAMES))
        if duplicates:
            reserved = ", ".join(sorted(RESERVED_NAMES))
            raise ValueError(f"names must be unique and not {reserved}: {', '.join(duplicates)}")
        for region in self.regions:
            if re.fullmatch(NAME, region) is None:
                raise ValueError(f"region name {region!r} must be lowercase letters, digits and '-'")
        edges = {e.id: e for e in self.edges}
        for e in self.edges:
            if e.region not in self.regions:
                raise ValueError(f"edge {e.id}: region {e.region!r} is not under [regions]")
            if (e.latitude is None) != (e.longitude is None):
                raise ValueError(f"edge {e.id}: give both latitude and longitude, or neither")
            unknown = [p for p in e.parents if p not in edges or p == e.id]
            if unknown:
                raise ValueError(f"edge {e.id}: parents must be other edges of the topology: {', '.join(unknown)}")
        for e in self.edges:  # a parent chain that comes back would bounce requests until CDN-Loop refuses them
            seen, todo = set(), list(e.parents)
            while todo:
                parent = todo.pop()
                if parent == e.id:
                    raise ValueError(f"edge {e.id}: its parents lead back to it")
                if parent not in seen:
                    seen.add(parent)
                    todo.extend(edges[parent].parents)
        for o in self.origins:
            if o.url is not None and o.settings:
                raise ValueError(f"origin {o.id}: an origin run elsewhere (url) takes no settings")
        return self

    def started_origins(self) -> list[OriginSpec]:
        """The origins this launcher starts (those without a `url`)."""
        return [o for o in self.origins if o.url is None]

    def services(self) -> list[tuple[str, str]]:
        """(process name, `cdn` subcommand) of every process, in start order."""
        return ([(o.id, "origin") for o in self.started_origins()] + [("purge-api", "purge-api")]
                + [(e.id, "edge") for e in self.edges] + [("router", "router")])


def load_topology(path: str | Path) -> Topology:
    """Read and check a topology file; every problem becomes one `ClusterError` naming it."""
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ClusterError(f"topology {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClusterError(f"topology {path}: {exc}") from None
    try:
        return Topology.model_validate(document)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or 'topology'}: {err['msg']}" for err in exc.errors()]
        raise ClusterError(f"topology {path}: " + "; ".join(problems)) from None


# -- the plan -------------------------------------------------------------------


@dataclass(frozen=True)
class Network:
    """Where each process listens, and the host name and port the others reach it at."""

    listen_host: str
    hostnames: Mapping[str, str]
    ports: Mapping[str, int]

    def url(self, name: str) -> str:
        return f"http://{self.hostnames[name]}:{self.ports[name]}"


def loopback_network(topology: Topology, ports: Mapping[str, int]) -> Network:
    """Every process on 127.0.0.1, each on its own port."""
    return Network("127.0.0.1", {name: "127.0.0.1" for name, _ in topology.services()}, ports)


def container_network(topology: Topology) -> Network:
    """One container per process (Compose): reached by its name, on its service's default port."""
    services = topology.services()
    ports = {name: settings_class(service).model_fields["port"].default for name, service in services}
    return Network("0.0.0.0", {name: name for name, _ in services}, ports)


@dataclass(frozen=True)
class Process:
    """One service instance to run: `cdn <service>` with `env` (its settings as `CDN_*` variables)."""

    name: str
    service: str
    port: int
    url: str
    env: dict[str, str]

    @property
    def health_path(self) -> str:
        return HEALTH_PATHS[self.service]


def env_text(value: Any) -> str:
    """A setting as `cdn.config` reads it from the environment: lists and tables as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)


def settings_env(service: str, name: str, owned: Mapping[str, Any],
                 *tables: tuple[str, Mapping[str, Any]]) -> dict[str, str]:
    """The `CDN_*` variables of one process: what the launcher derived, then the topology's tables (later win)."""
    cls = settings_class(service)
    values = {k: v for k, v in owned.items() if v is not None}
    for where, table in tables:
        for key, value in table.items():
            if key not in cls.model_fields:
                raise ClusterError(f"{where}: {service} has no setting {key!r}")
            if key in OWNED[service]:
                raise ClusterError(f"{where}: {key!r} is set by the launcher from the topology; remove it")
            values[key] = value
    prefix = env_prefix(cls)
    env = {prefix + key.upper(): env_text(value) for key, value in values.items()}
    try:
        load_settings(cls, environ=env)
    except SettingsError as exc:
        raise ClusterError(f"{name} ({service}): {exc}") from None
    return env


def plan(topology: Topology, redis: str, network: Network) -> list[Process]:
    """Every process of the topology with its settings, for services reached through `network`."""
    started = topology.started_origins()
    origin_urls = [o.url.rstrip("/") if o.url else network.url(o.id) for o in topology.origins]
    purge_token = topology.purge_api.get("token")
    processes: list[Process] = []

    def add(name: str, service: str, owned: dict[str, Any], *tables: tuple[str, Mapping[str, Any]]) -> None:
        owned = {"host": network.listen_host, "port": network.ports[name], **owned}
        processes.append(Process(name, service, network.ports[name], network.url(name),
                                 settings_env(service, name, owned, *tables)))

    for o in started:
        add(o.id, "origin", {
            # Several instances act as one backend only through a shared store.
            "redis": redis if len(started) > 1 else None,
            "purge_api": network.url("purge-api") if purge_token else None,
            "purge_token": purge_token,
        }, ("[origin]", topology.origin), (f"origin {o.id}", o.settings))
    add("purge-api", "purge-api", {"redis": redis}, ("[purge-api]", topology.purge_api))
    for e in topology.edges:
        region = topology.regions[e.region]
        add(e.id, "edge", {
            "id": e.id, "region": e.region,
            "latitude": region.latitude if e.latitude is None else e.latitude,
            "longitude": region.longitude if e.longitude is None else e.longitude,
            "advertise_url": network.url(e.id), "redis": redis, "origin": origin_urls[0],
            "pool": {"members": origin_urls} if len(origin_urls) > 1 else None,
            "parents": [network.url(p) for p in e.parents] or None,
        }, ("[edge]", topology.edge), (f"edge {e.id}", e.settings))
    add("router", "router", {
        "redis": redis,
        "regions": {name: [r.latitude, r.longitude] for name, r in topology.regions.items()},
    }, ("[router]", topology.router))
    return processes


# -- Redis ----------------------------------------------------------------------


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether the Redis at `url` (or the master its Sentinels name) answers PING."""
    import redis

    async def ping() -> bool:
        client = redis_from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(await client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            await client.aclose()

    return asyncio.run(ping())


# -- processes ------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that nothing listens on now."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:  # all held open at once, so no two are the same
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def spawn(argv: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (so its whole process group can be signalled), output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def child_environment(settings: Mapping[str, str]) -> dict[str, str]:
    """This environment without any `CDN_*` variable (they would leak into every service), plus `settings`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CDN_")}
    return {**base, "PYTHONUNBUFFERED": "1", **settings}


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), to tell it from a later process given the same pid."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields is not None else None


def live_groups(pgids: Iterable[int]) -> set[int]:
    """Those of `pgids` with a process still running (zombies waiting to be reaped do not count)."""
    wanted = set(pgids)
    alive: set[int] = set()
    if not Path("/proc/self/stat").exists():  # no /proc: a group of zombies counts as running
        for pgid in wanted:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, 0)
                alive.add(pgid)
        return alive
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) in wanted:
                alive.add(int(fields[2]))
    return alive


def running(entries: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The entries whose process group still runs."""
    entries = list(entries)
    alive = live_groups(e["pgid"] for e in entries)
    return [e for e in entries if e["pgid"] in alive]


def is_ours(entry: Mapping[str, Any]) -> bool:
    """Whether the group's leader is the process we started, or gone (a pgid is not reused while its group lives)."""
    started = start_time(entry["pid"])
    return started is None or entry.get("started") is None or started == entry["started"]


def stop_groups(entries: Iterable[Mapping[str, Any]], grace: float = STOP_GRACE) -> list[str]:
    """SIGTERM every process group, SIGKILL those still there after `grace` seconds; the names that needed it."""
    entries = [e for e in running(entries) if is_ours(e)]
    for e in reversed(entries):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(e["pgid"], signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and running(entries):
        time.sleep(0.05)
    killed = []
    for e in running(entries):
        killed.append(e["name"])
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(e["pgid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and running(entries):
        time.sleep(0.05)
    return killed


def healthy(url: str, timeout: float = 1.0) -> bool:
    """Whether GET `url` answers 200."""
    try:
        return httpx.get(url, timeout=timeout, trust_env=False).status_code == 200  # never through a proxy
    except httpx.HTTPError:
        return False


def log_tail(path: str | Path, lines: int = 20) -> str:
    """The last lines of a process's log, to show why it failed."""
    with contextlib.suppress(OSError):
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    return ""


# -- the state file -------------------------------------------------------------


def read_state(path: Path) -> dict[str, Any] | None:
    """The state file's contents, or None when there is none."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ClusterError(f"state file {path}: {exc}") from None


def write_state(path: Path, state: Mapping[str, Any]) -> None:
    """Replace the state file at once, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(temporary, path)


class Cluster:
    """The processes one `up` started, recorded in the state file as they start."""

    def __init__(self, topology_path: Path, state_path: Path) -> None:
        self.state_path = state_path
        self.logs = state_path.parent / "logs"
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.state: dict[str, Any] = {"topology": str(topology_path.resolve()), "started_at": time.time(),
                                      "controller": None, "redis": None, "processes": []}

    def start(self, name: str, service: str, argv: list[str], env: Mapping[str, str], port: int,
              url: str, health: str | None) -> dict[str, Any]:
        log = self.logs / f"{name}.log"
        child = spawn(argv, env, log)
        self.children[child.pid] = child
        entry = {"name": name, "service": service, "pid": child.pid, "pgid": child.pid,
                 "started": start_time(child.pid), "port": port, "url": url, "health": health, "argv": argv,
                 "log": str(log.resolve())}
        self.state["processes"].append(entry)
        self.save()
        return entry

    def start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ClusterError("redis-server is not on PATH: install it, or pass --redis URL")
        (port,) = free_ports(1)
        data = self.state_path.parent / "redis"
        data.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(data.resolve())]
        url = f"redis://127.0.0.1:{port}/0"
        self.start("redis", "redis", argv, os.environ, port, url, None)
        self.state["redis"] = {"url": url, "own": True}
        self.save()
        return url

    def save(self) -> None:
        write_state(self.state_path, self.state)

    def exited(self) -> list[dict[str, Any]]:
        """Processes that stopped on their own."""
        return [e for e in self.state["processes"] if self.children[e["pid"]].poll() is not None]

    def wait_healthy(self, timeout: float) -> None:
        """Until every process answers its health check; a process that exits or stays unhealthy fails it."""
        waiting = list(self.state["processes"])
        deadline = time.monotonic() + timeout
        while waiting:
            for e in list(waiting):
                if self.children[e["pid"]].poll() is not None:
                    raise ClusterError(f"{e['name']} exited with status {self.children[e['pid']].returncode}:\n"
                                       + log_tail(e["log"]))
                ok = redis_answers(e["url"], 0.5) if e["service"] == "redis" else healthy(e["url"] + e["health"], 0.5)
                if ok:
                    waiting.remove(e)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(e["name"] for e in waiting)
                raise ClusterError(f"not healthy after {timeout:.0f} s: {names}\n" + log_tail(waiting[0]["log"]))
            if waiting:
                time.sleep(0.1)

    def stop(self) -> list[str]:
        """Stop every process this cluster started and forget the state file."""
        killed = stop_groups(self.state["processes"])
        for child in self.children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1)
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        return killed


def up(topology_path: Path, state_path: Path, redis: str | None, detach: bool, timeout: float) -> int:
    """Start the topology's processes, wait until all are healthy, then stay until interrupted (or detach)."""
    topology = load_topology(topology_path)
    previous = read_state(state_path)
    if previous is not None and running(previous["processes"]):
        raise ClusterError(f"a cluster is already running ({state_path}): stop it with `cdn cluster down`")
    services = topology.services()
    network = loopback_network(topology, dict(zip([n for n, _ in services], free_ports(len(services)), strict=True)))
    # Plan before starting anything: a bad setting stops here, not in a process log.
    processes = plan(topology, redis or "redis://127.0.0.1:0/0", network)
    cluster = Cluster(topology_path, state_path)
    began = time.monotonic()
    stopping = _stop_on_sigterm()
    try:
        if redis is None:
            redis = cluster.start_redis()
            processes = plan(topology, redis, network)
        elif not redis_answers(redis, 2.0):
            raise ClusterError(f"no Redis answers at {redis}")
        else:
            cluster.state["redis"] = {"url": redis, "own": False}
        for p in processes:
            cluster.start(p.name, p.service, [sys.executable, "-m", "cdn", p.service], child_environment(p.env),
                          p.port, p.url, p.health_path)
        cluster.wait_healthy(timeout)
        if not detach:
            cluster.state["controller"] = {"pid": os.getpid(), "started": start_time(os.getpid())}
        cluster.state["urls"] = summary_urls(topology, processes)
        cluster.state["purge_token"] = topology.purge_api.get("token")
        cluster.save()
        print(describe(cluster.state, state_path, time.monotonic() - began, detach))
        if detach:
            return 0
        while not cluster.exited():
            time.sleep(0.2)
        gone = cluster.exited()
        print(f"cdn cluster: {gone[0]['name']} stopped on its own:\n{log_tail(gone[0]['log'])}", file=sys.stderr)
        cluster.stop()
        return 1
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr)
        cluster.stop()
        print("stopped.")
        return 0
    except BaseException:
        cluster.stop()
        raise
    finally:
        signal.signal(signal.SIGTERM, stopping)


def _stop_on_sigterm() -> Any:
    """Make SIGTERM (e.g. from `cdn cluster down`) stop the foreground cluster like Ctrl-C; the previous handler."""
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def summary_urls(topology: Topology, processes: list[Process]) -> dict[str, Any]:
    by_name = {p.name: p.url for p in processes}
    return {
        "front_door": by_name["router"],
        "purge_api": by_name["purge-api"],
        "origins": {o.id: o.url or by_name[o.id] for o in topology.origins},
        "edges": {e.id: by_name[e.id] for e in topology.edges},
    }


def describe(state: Mapping[str, Any], state_path: Path, seconds: float, detached: bool) -> str:
    """What `up` prints: the URLs, the state file, and what to try."""
    urls = state["urls"]
    lines = [f"cluster up: {len(state['processes'])} processes healthy in {seconds:.1f} s",
             f"  front door  {urls['front_door']}",
             f"  purge API   {urls['purge_api']}",
             f"  redis       {state['redis']['url']}" + ("" if state["redis"]["own"] else " (given)")]
    lines += [f"  origin      {url}  ({name})" for name, url in urls["origins"].items()]
    lines += [f"  edge        {url}  ({name})" for name, url in urls["edges"].items()]
    origin = next(iter(urls["origins"].values()))
    token = state.get("purge_token") or "TOKEN"
    lines += [f"state: {state_path.resolve()}   logs: {(state_path.parent / 'logs').resolve()}", "", "Try:",
              f"  curl -i {urls['front_door']}/api/products/7",
              f"  cdn purge tag product-7 --api {urls['purge_api']} --token {token} --wait",
              f"  cdn bench --front-door {urls['front_door']} --origin {origin} --purge-api {urls['purge_api']}"
              f" --token {token}",
              "", "Stop: cdn cluster down" + ("" if detached else "  (or Ctrl-C)")]
    return "\n".join(lines)


def down(state_path: Path) -> int:
    """Stop every process the state file lists (the foreground `up` first, so it stops its own) and remove it."""
    state = read_state(state_path)
    if state is None:
        print(f"no cluster state at {state_path}: nothing to stop")
        return 0
    before = running(state["processes"])
    controller = state.get("controller")
    if controller and controller["pid"] != os.getpid() and start_time(controller["pid"]) == controller["started"]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(controller["pid"], signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE + 5
        while time.monotonic() < deadline and running(state["processes"]):
            time.sleep(0.05)
    alive = running(state["processes"])
    killed = stop_groups(alive)
    left = running(state["processes"])
    if left:
        raise ClusterError("still running after SIGKILL: " + ", ".join(f"{e['name']} (pid {e['pid']})" for e in left))
    with contextlib.suppress(FileNotFoundError):
        state_path.unlink()
    print(f"stopped {len(before)} processes" + (f" ({', '.join(killed)} needed SIGKILL)" if killed else ""))
    return 0


def status(state_path: Path) -> int:
    """Print each recorded process, whether it runs and answers its health check; 1 unless all do."""
    state = read_state(state_path)
    if state is None:
        print(f"no cluster running (no state at {state_path})")
        return 1
    print(f"cluster from {state['topology']} (state: {state_path.resolve()})")
    all_well = True
    alive = {e["pid"] for e in running(state["processes"])}
    for e in state["processes"]:
        if e["pid"] not in alive:
            condition = "stopped"
        elif e["service"] == "redis":
            condition = "healthy" if redis_answers(e["url"]) else "unhealthy"
        else:
            condition = "healthy" if healthy(e["url"] + e["health"]) else "unhealthy"
        all_well &= condition == "healthy"
        print(f"  {e['name']:<16} {e['service']:<10} pid {e['pid']:<8} {e['url']:<28} {condition}")
    return 0 if all_well else 1


# -- command line ---------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`cdn cluster up|down|status` and their options."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    state_help = f"state file (default: {DEFAULT_STATE})"
    start = actions.add_parser("up", help="start every service of a topology file on loopback",
                               description="Start Redis (unless --redis), the origins, the purge API, the edges and "
                                           "the front door of a topology file, each on a free loopback port.")
    start.add_argument("topology", type=Path, help="topology file (e.g. compose/topology.toml)")
    start.add_argument("--redis", metavar="URL", default=None,
                       help="use this Redis, redis://... or redis+sentinel://... "
                            "(default: start a redis-server of our own on a free port)")
    start.add_argument("--detach", action="store_true", help="return once everything is healthy, leaving it running")
    start.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for health (default 60)")
    start.add_argument("--state", type=Path, default=DEFAULT_STATE, help=state_help)
    stop = actions.add_parser("down", help="stop a cluster started by `cdn cluster up`")
    stop.add_argument("--state", type=Path, default=DEFAULT_STATE, help=state_help)
    show = actions.add_parser("status", help="show what the cluster runs and whether it is healthy")
    show.add_argument("--state", type=Path, default=DEFAULT_STATE, help=state_help)


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "up":
            return up(args.topology, args.state, args.redis, args.detach, args.timeout)
        if args.action == "down":
            return down(args.state)
        return status(args.state)
    except ClusterError as exc:
        print(f"cdn cluster {args.action}: {exc}", file=sys.stderr)
        return 1
