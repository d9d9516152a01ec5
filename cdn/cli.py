"""`cdn`: one command with a subcommand per service.

Every service's flags are generated from its settings model, so `--help` lists
every setting with its description and default, and a flag always overrides
the config file and the `CDN_*` environment.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import shutil
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from cdn import serving, worker_metrics
from cdn.config import ServiceSettings, SettingsError, env_prefix, load_settings

# subcommand -> (settings class, app factory), imported only when used.
SERVICES: dict[str, tuple[str, str, str]] = {
    "edge": ("edge.settings:EdgeSettings", "edge.app:create_app", "run an edge node (caching reverse proxy)"),
    "origin": ("origin_mock.settings:OriginSettings", "origin_mock.app:create_app", "run the origin mock (a small shop)"),
    "purge-api": ("purge_api.settings:PurgeApiSettings", "purge_api.app:create_app", "run the purge service"),
    "router": ("balancer.router_settings:RouterSettings", "balancer.router:create_app", "run the front door"),
}


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _flag_type(annotation: Any) -> tuple[Any, bool]:
    """The argparse type for a field and whether it is a boolean switch."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation is bool:
        return None, True
    if annotation in (int, float, str):
        return annotation, False
    origin = typing.get_origin(annotation) or annotation
    if origin in (list, dict, tuple) or (isinstance(origin, type) and issubclass(origin, BaseModel)):
        return json.loads, False
    return str, False


def add_settings_flags(parser: argparse.ArgumentParser, cls: type[ServiceSettings]) -> None:
    """One flag per setting, named after it (`max_object_size` -> `--max-object-size`)."""
    parser.add_argument("--config", metavar="FILE", help=f"TOML file; settings are read from its [{cls.section}] table")
    prefix = env_prefix(cls)
    for name, field in cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind, is_switch = _flag_type(field.annotation)
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description or ''} (default: {default!r}; env {prefix}{name.upper()})"
        if is_switch:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            metavar = "JSON" if kind is json.loads else name.upper()
            parser.add_argument(flag, dest=name, type=kind, default=None, metavar=metavar, help=help_text)


def settings_from_args(cls: type[ServiceSettings], args: argparse.Namespace) -> ServiceSettings:
    overrides = {name: getattr(args, name, None) for name in cls.model_fields}
    return load_settings(cls, args.config, overrides)


# Per-worker settings: each edge worker is an edge of its own in the registry, so purges wait for all of them.
WORKER_SETTINGS: dict[str, Callable[[Any, int], dict[str, Any]]] = {
    "edge": lambda settings, number: {"id": f"{settings.id}.{number}"},
}


def uvicorn_options(settings: Any, proxy: bool) -> dict[str, Any]:
    """How every service runs on uvicorn (`proxy`: it keeps its upstream's Date and Server fields)."""
    from cdn import http_server

    # Idle client connections stay open 75 s (as nginx's default): clients that keep connections
    # alive for 5 s (Node's agents) would otherwise race the server closing them.
    options: dict[str, Any] = dict(log_level=settings.log_level, access_log=False, lifespan="on",
                                   date_header=not proxy, server_header=not proxy, timeout_graceful_shutdown=5,
                                   timeout_keep_alive=75, proxy_headers=False)  # the shield decides whose XFF to trust
    # Deadlines and head limits uvicorn lacks; upgrades served as plain HTTP; writes of one loop turn sent
    # together; logs written off the event loop.
    options.update(http=http_server.protocol_class(http_server.ClientLimits.of(settings)), ws="none",
                   log_config=http_server.queued_log_config(settings.log_level))
    return options


def freeze_start_up() -> None:
    """What start-up made (modules, classes, settings, the app) lives as long as the process: out of the
    cycle collector's sight, a full collection, which holds every request, no longer visits it each time
    (55,000 objects, 7 ms of every full collection on the project's machine), and forked workers do not
    write to its pages."""
    gc.collect()
    gc.freeze()


def serve(service: str, make_app: Callable[[Any], Any], settings: Any, app: Any = None) -> int:
    """Run `app` on the service's server, or with `workers` > 1, that many forked uvicorn processes each making one."""
    import uvicorn

    freeze_start_up()
    if getattr(settings, "server", "uvicorn") == "granian":
        serving.run_granian(app, settings.host, settings.port, settings.log_level)
        return 0
    options = uvicorn_options(settings, proxy=service in ("edge", "router"))
    if app is not None:
        uvicorn.run(app, host=settings.host, port=settings.port, **options)
        return 0

    sock = serving.bind(settings.host, settings.port)
    shared = worker_metrics.make_folder(service)

    def run_worker(number: int, sock: Any) -> None:
        worker_metrics.become_worker(shared, number)
        changes = WORKER_SETTINGS.get(service, lambda *_: {})(settings, number)
        app = make_app(settings.model_copy(update=changes))
        freeze_start_up()
        uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=[sock])

    try:
        return serving.supervise(run_worker, settings.workers, sock)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdn", description="A content delivery network you can run yourself.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (settings_ref, _, summary) in SERVICES.items():
        service_parser = sub.add_parser(name, help=summary, description=summary)
        add_settings_flags(service_parser, _load(settings_ref))
    from cdn import purge_client

    purge = sub.add_parser("purge", help="purge through the purge API",
                           description="Purge by URL, prefix, tag, event or everything, on every edge.")
    purge_client.add_arguments(purge)
    demo = sub.add_parser("demo", help="run a whole CDN locally under a realistic workload and report the offload",
                          description="Start an origin far away, a purge API, edges in three regions and a front door "
                                      "in this process on loopback, drive a workload through them, and report.")
    bench = sub.add_parser("bench", help="drive the demo's workload against a running deployment and report",
                           description="The demo's workload and report against any running deployment.")
    from cdn import demo as demo_module

    demo_module.add_arguments(demo, bench)
    from cdn import cluster

    cluster.add_arguments(sub.add_parser("cluster", help="run a topology file's services as local processes",
                                         description="Start, stop or show a whole CDN from a topology file, "
                                                     "each service a process on loopback."))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "purge":
            from cdn import purge_client

            return purge_client.run(args)
        if args.command in ("demo", "bench"):
            from cdn.demo import run_bench, run_demo

            return run_demo(args) if args.command == "demo" else run_bench(args)
        if args.command == "cluster":
            from cdn import cluster

            return cluster.run(args)
        settings_ref, factory_ref, _ = SERVICES[args.command]
        settings = settings_from_args(_load(settings_ref), args)
        make_app = _load(factory_ref)
        # With one process the app is built here, so a settings error it finds is reported like the others.
        app = make_app(settings) if getattr(settings, "workers", 1) == 1 else None
    except SettingsError as exc:
        print(f"cdn {args.command}: {exc}", file=sys.stderr)
        return 2
    return serve(args.command, make_app, settings, app)


if __name__ == "__main__":
    sys.exit(main())
