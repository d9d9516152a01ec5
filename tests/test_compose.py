"""The Compose deployment: valid by the Compose specification's schema, and the same CDN as `compose/topology.toml`."""

from __future__ import annotations

import copy
import functools
import json
import re
import tomllib
from typing import Any

import jsonschema
import yaml

from cdn.cli import SERVICES
from cdn.cluster import HEALTH_PATHS, Process, container_network, load_topology, plan, settings_class
from cdn.config import env_prefix, load_settings
from tests.servers import ROOT

COMPOSE = ROOT / "compose"
REDIS_URL = "redis://redis:6379/0"  # the Compose file's Redis, as the containers reach it
PUBLISHED = {"router", "purge-api"}


@functools.cache
def load_compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def interpolated(value: Any) -> str:
    """An environment value as Compose hands it over with no variables set: `${NAME:-default}` is the default."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    assert re.search(r"\$\{\w+\}|\$\{\w+:?[?+]", text) is None, f"{text!r}: give every variable a :- default"
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {name: interpolated(value) for name, value in (service.get("environment") or {}).items()}


def cdn_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run `cdn <subcommand>` (the image's entry point is `cdn`)."""
    return {name: s for name, s in compose["services"].items() if s.get("build")}


@functools.cache
def planned() -> dict[str, Process]:
    topology = load_topology(COMPOSE / "topology.toml")
    return {p.name: p for p in plan(topology, REDIS_URL, container_network(topology))}


# -- the Compose specification ---------------------------------------------------


@functools.cache
def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((COMPOSE / "compose-spec.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_the_compose_file_is_valid_by_the_compose_specification() -> None:
    errors = [f"{e.json_path}: {e.message}" for e in compose_validator().iter_errors(load_compose())]
    assert errors == []


def test_the_schema_check_catches_a_misspelt_key() -> None:
    broken = copy.deepcopy(load_compose())
    broken["services"]["router"]["healthcheck"]["intervall"] = "5s"
    broken["services"]["redis"]["restart"] = ["always"]
    assert len(list(compose_validator().iter_errors(broken))) >= 2


# -- the same CDN as the topology -----------------------------------------------------


def test_compose_runs_exactly_the_topologys_processes_and_redis() -> None:
    assert set(load_compose()["services"]) == set(planned()) | {"redis"}


def test_each_service_runs_its_subcommand() -> None:
    processes = planned()
    for name, service in cdn_services(load_compose()).items():
        assert service["command"] == [processes[name].service], name
        assert processes[name].service in SERVICES


def test_every_edge_of_the_topology_has_its_id_region_and_coordinates() -> None:
    topology = load_topology(COMPOSE / "topology.toml")
    services = load_compose()["services"]
    for edge in topology.edges:
        env = environment(services[edge.id])
        region = topology.regions[edge.region]
        assert env["CDN_EDGE_ID"] == edge.id
        assert env["CDN_EDGE_REGION"] == edge.region
        assert float(env["CDN_EDGE_LATITUDE"]) == (edge.latitude if edge.latitude is not None else region.latitude)
        assert float(env["CDN_EDGE_LONGITUDE"]) == (edge.longitude if edge.longitude is not None else region.longitude)
        assert env["CDN_EDGE_REDIS"] == REDIS_URL
        assert env["CDN_EDGE_ADVERTISE_URL"] == f"http://{edge.id}:8080"


def test_every_cdn_variable_names_a_setting_of_its_service() -> None:
    processes = planned()
    for name, service in cdn_services(load_compose()).items():
        cls = settings_class(processes[name].service)
        env = environment(service)
        prefix, fields = env_prefix(cls), set(cls.model_fields)
        for variable in env:
            assert variable.startswith(prefix), f"{name}: {variable} is not a {prefix}* setting"
            assert variable[len(prefix):].lower() in fields, f"{name}: {variable} names no setting"
        load_settings(cls, environ=env)  # and every value is valid


def test_compose_sets_what_the_launcher_sets_for_each_process() -> None:
    services = load_compose()["services"]
    for name, process in planned().items():
        env = environment(services[name])
        cls = settings_class(process.service)
        missing, extra = sorted(set(process.env) - set(env)), sorted(set(env) - set(process.env))
        assert (missing, extra) == ([], []), f"{name}: missing {missing}, not in compose/topology.toml {extra}"
        ours = load_settings(cls, environ=process.env).model_dump()
        theirs = load_settings(cls, environ=env).model_dump()
        assert {k: theirs[k] for k in ours if theirs[k] != ours[k]} == {}, f"{name}: compose differs from the topology"


def test_the_purge_token_is_the_same_for_the_api_and_the_origin() -> None:
    topology = tomllib.loads((COMPOSE / "topology.toml").read_text())
    services = load_compose()["services"]
    assert environment(services["purge-api"])["CDN_PURGE_API_TOKEN"] == topology["purge-api"]["token"]
    assert environment(services["origin"])["CDN_ORIGIN_PURGE_TOKEN"] == topology["purge-api"]["token"]


# -- how the containers run ----------------------------------------------------------


def test_health_checks_ask_each_service_its_health_endpoint() -> None:
    processes = planned()
    services = load_compose()["services"]
    for name, service in cdn_services(load_compose()).items():
        process = processes[name]
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        assert f"urlopen('http://127.0.0.1:{process.port}{HEALTH_PATHS[process.service]}'" in test[3], name
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_only_the_front_door_and_the_purge_api_publish_ports() -> None:
    services = load_compose()["services"]
    assert {name for name, s in services.items() if s.get("ports")} == PUBLISHED
    processes = planned()
    for name in PUBLISHED:
        (mapping,) = services[name]["ports"]
        assert str(mapping).endswith(f":{processes[name].port}")


def test_every_service_restarts_and_waits_for_what_it_needs() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), name
        for needed, condition in (service.get("depends_on") or {}).items():
            assert needed in services, f"{name} depends on unknown {needed}"
            assert condition["condition"] == "service_healthy"
            assert "healthcheck" in services[needed]


def test_redis_keeps_an_append_only_file_on_a_volume() -> None:
    compose = load_compose()
    redis = compose["services"]["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    (volume,) = redis["volumes"]
    name, _, target = volume.partition(":")
    assert target == "/data" and name in compose["volumes"]


def test_the_edges_reach_each_other_and_the_origin_by_service_name() -> None:
    services = load_compose()["services"]
    for name in planned():
        for value in environment(services[name]).values():
            for host in re.findall(r"https?://([^:/]+)", value):
                assert host in services, f"{name}: {value} names no service"


# -- the image ------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of each line of compose/Dockerfile, continuations joined."""
    text = re.sub(r"\\\n", " ", (COMPOSE / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_image_is_python_3_11_slim_running_cdn_as_a_user() -> None:
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert [args for op, args in instructions if op == "ENTRYPOINT"] == ['["cdn"]']
    assert any(op == "RUN" and "pip install ." in args for op, args in instructions)


def test_the_image_copies_every_package_the_project_installs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {args.split()[0] for op, args in dockerfile() if op == "COPY"}
    assert packages <= copied
    assert {"pyproject.toml", "README.md"} <= set(" ".join(a for op, a in dockerfile() if op == "COPY").split())
    ignore = (COMPOSE / "Dockerfile.dockerignore").read_text()
    for package in packages:
        assert f"!{package}/" in ignore


def test_compose_builds_the_image_from_the_repository_root() -> None:
    for name, service in cdn_services(load_compose()).items():
        build = service["build"]
        assert (COMPOSE / build["context"] / build["dockerfile"]).resolve() == (COMPOSE / "Dockerfile").resolve(), name

