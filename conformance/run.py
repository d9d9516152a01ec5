"""Run the public HTTP cache test suite (npm `http-cache-tests`) against an edge and count its passes.

    python -m conformance.run                  # origin = the suite's server, an edge in front, whole suite
    python -m conformance.run --check          # ... and exit 1 if below conformance/floor.json
    python -m conformance.run --id TEST        # one test, with the suite's request/response dump
    python -m conformance.run --direct         # no edge: the suite straight against its server ("no cache")
    python -m conformance.run --count-file results/nginx.json   # count a published results file

Passes are counted as on the suite's results page: a test passes when its result is `true` and every
test it `depends_on` passes too; browser-only tests are left out; kind `required` (or no kind) and
`optimal` are counted separately, `check` tests not at all.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = ROOT / ".cache" / "conformance"
SUITE, VERSION = "http-cache-tests", "0.4.5"
PACKAGE = CACHE / "node_modules" / SUITE
FLOOR = HERE / "floor.json"
RESULTS = CACHE / "results.json"
KINDS = ("required", "optimal")
# The suite is one client sending hundreds of misses in seconds: the shield's default per-client
# limit on origin-bound requests (20/s) would answer many with 429, so its rules are off here.
EDGE_CMD = [sys.executable, "-m", "cdn", "edge", "--port", "{port}", "--origin", "{origin}",
            "--shield", '{"rules": []}']
START_TIMEOUT = 30.0  # seconds for the origin or the edge to accept connections
REQUEST_TIMEOUT = 45.0  # seconds per client request; above the edge's default origin timeout (30 s)


class RunError(Exception):
    """The run itself failed (tooling, start-up, timeout), as opposed to a test failing."""


@dataclass
class Verdict:
    """One test's outcome as the results page shows it."""

    status: str  # pass, fail, setup, retry, dependency, untested
    message: str = ""


# --- the suite and its tests ---------------------------------------------------------------------

def installed_version() -> str | None:
    """Version of the suite in the cache, if any."""
    try:
        return json.loads((PACKAGE / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def ensure_suite() -> Path:
    """Install http-cache-tests@VERSION into .cache/conformance unless it is already there."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        raise RunError(f"{' and '.join(missing)} not found on PATH: install Node.js 20 or newer (./dev setup does)")
    if installed_version() == VERSION:
        return PACKAGE
    CACHE.mkdir(parents=True, exist_ok=True)
    manifest = CACHE / "package.json"
    if not manifest.exists():  # npm would otherwise look for a project in the parent directories
        manifest.write_text('{"private": true}\n')
    print(f"conformance: installing {SUITE}@{VERSION} into {CACHE.relative_to(ROOT)}", file=sys.stderr)
    cmd = ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(CACHE), f"{SUITE}@{VERSION}"]
    try:
        done = subprocess.run(cmd, cwd=CACHE, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise RunError("npm install took more than 10 minutes") from None
    if done.returncode != 0 or installed_version() != VERSION:
        raise RunError(f"npm install failed ({done.returncode}):\n{tail(done.stderr or done.stdout)}")
    return PACKAGE


def list_tests(package: Path) -> dict[str, dict[str, Any]]:
    """The suite's tests by id: kind, depends_on, browser_only, browser_skip."""
    done = subprocess.run(["node", str(HERE / "list_tests.mjs"), str(package)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RunError(f"cannot list the suite's tests:\n{tail(done.stderr)}")
    return {test["id"]: test for test in json.loads(done.stdout)}


# --- counting ------------------------------------------------------------------------------------

def judge(tests: dict[str, dict[str, Any]], results: dict[str, Any]) -> dict[str, Verdict]:
    """Each test's verdict, dependencies honoured (a test whose dependency does not pass does not pass)."""
    verdicts: dict[str, Verdict] = {}

    def verdict(test_id: str) -> Verdict:
        if test_id in verdicts:
            return verdicts[test_id]
        verdicts[test_id] = Verdict("untested", "dependency cycle")  # placeholder while recursing
        result = results.get(test_id)
        own = "" if result is True or not isinstance(result, list) else str(result[-1])
        failed = [dep for dep in tests[test_id]["depends_on"] if verdict(dep).status != "pass"]
        if result is None:
            found = Verdict("untested", "no result")
        elif failed:
            found = Verdict("dependency", f"dependency not passing: {', '.join(failed)}" + (f"; own result: {own}" if own else ""))
        elif result is True:
            found = Verdict("pass")
        elif isinstance(result, list) and result[:1] == ["Setup"]:
            found = Verdict("retry", "the cache retried a request") if own == "retry" else Verdict("setup", f"setup: {own}")
        else:
            found = Verdict("fail", own or repr(result))
        verdicts[test_id] = found
        return found

    for test_id in tests:
        verdict(test_id)
    return verdicts


def summarize(tests: dict[str, dict[str, Any]], results: dict[str, Any]) -> dict[str, Any]:
    """Passes, totals and failing tests (with the suite's message) for required and optimal tests."""
    summary: dict[str, Any] = {kind: {"passed": 0, "total": 0, "failing": []} for kind in KINDS}
    verdicts = judge(tests, results)
    for test_id, test in tests.items():
        # outside a browser the suite does not run browser-only tests, and the published counts omit them
        if test["browser_only"] or test["kind"] not in summary:
            continue
        entry, found = summary[test["kind"]], verdicts[test_id]
        entry["total"] += 1
        if found.status == "pass":
            entry["passed"] += 1
        else:
            entry["failing"].append({"id": test_id, "status": found.status, "message": found.message})
    return summary


def report(summary: dict[str, Any], label: str) -> None:
    """Print the counts line, then the failing tests grouped by kind."""
    counts = ", ".join(f"{kind} {summary[kind]['passed']}/{summary[kind]['total']}" for kind in KINDS)
    print(f"conformance: {counts}  ({label})")
    for kind in KINDS:
        failing = summary[kind]["failing"]
        if failing:
            print(f"\n{kind} tests not passing ({len(failing)}):")
            width = max(len(item["id"]) for item in failing)
            for item in failing:
                status = "" if item["status"] == "fail" else f"[{item['status']}] "
                print(f"  {item['id']:<{width}}  {status}{item['message']}")


def check_floor(summary: dict[str, Any]) -> int:
    """0 if every count is at or above the committed floor, else 1 (with a message)."""
    floor = json.loads(FLOOR.read_text())
    below = [f"{kind} {summary[kind]['passed']} < {floor[kind]}" for kind in KINDS if summary[kind]["passed"] < floor.get(kind, 0)]
    if below:
        print(f"conformance: FAILED, below the floor in {FLOOR.relative_to(ROOT)}: {'; '.join(below)}", file=sys.stderr)
        return 1
    print(f"conformance: at or above the floor ({', '.join(f'{k} {floor.get(k, 0)}' for k in KINDS)})", file=sys.stderr)
    return 0


# --- processes -----------------------------------------------------------------------------------

class Processes:
    """Child processes, each in its own process group, all stopped when the block exits."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.started):
            stop(proc)

    def start(self, cmd: list[str], log: Path | None, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start `cmd` with its output appended to `log` (None: this terminal)."""
        out = open(log, "ab") if log else None
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT if out else None,
                                    start_new_session=True, **kwargs)
        finally:
            if out:
                out.close()
        self.started.append(proc)
        return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a child's process group (so its own children go too), then kill whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen[bytes], name: str, log: Path) -> None:
    """Wait until 127.0.0.1:port accepts connections; fail if `proc` exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RunError(f"{name} exited with code {proc.returncode} before listening on port {port}:\n{tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RunError(f"{name} not listening on port {port} after {START_TIMEOUT:.0f} s:\n{tail(log)}")
        time.sleep(0.1)


def tail(source: Path | str, lines: int = 20) -> str:
    """The last lines of a log file or text, indented."""
    text = source.read_text(errors="replace") if isinstance(source, Path) else source
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])


# --- a run ---------------------------------------------------------------------------------------

def run_suite(args: argparse.Namespace, package: Path) -> dict[str, Any] | None:
    """Start origin (and edge), run the suite's CLI; the results, or None for a single-test run."""
    CACHE.mkdir(parents=True, exist_ok=True)
    origin_log, edge_log, client_log = CACHE / "origin.log", CACHE / "edge.log", CACHE / "client.log"
    for log in (origin_log, edge_log, client_log):
        log.write_bytes(b"")
    deadline = time.monotonic() + args.timeout
    with Processes() as procs:
        origin_port = free_port()
        env = {**os.environ, "npm_config_protocol": "http", "npm_config_port": str(origin_port),
               "npm_config_pidfile": str(CACHE / "origin.pid")}
        origin = procs.start(["node", "--import", (HERE / "loopback.mjs").as_uri(), "server/server.mjs"],
                             origin_log, cwd=package, env=env)
        wait_listening(origin_port, origin, "the suite's server", origin_log)

        edge, base_port, restarts = None, origin_port, 0
        if not args.direct:
            base_port = free_port()
            cmd = shlex.split(args.edge_cmd) if args.edge_cmd else list(EDGE_CMD)
            origin = f"http://127.0.0.1:{origin_port}"
            edge_cmd = [part.replace("{port}", str(base_port)).replace("{origin}", origin) for part in cmd] + args.edge_arg

            def start_edge() -> subprocess.Popen[bytes]:
                proc = procs.start(edge_cmd, edge_log, cwd=ROOT)
                wait_listening(base_port, proc, "the edge", edge_log)
                return proc

            edge = start_edge()

        # No trailing slash: the suite appends "/test/...", and "//test" would parse as a host name.
        # An empty npm_config_id falls back to npm_package_config_id, which `npm run` would set to "".
        env = {**os.environ, "npm_config_base": f"http://127.0.0.1:{base_port}", "npm_config_id": args.id or "",
               "npm_package_config_id": "", "CONFORMANCE_REQUEST_TIMEOUT_MS": str(int(REQUEST_TIMEOUT * 1000))}
        client_cmd = ["node", "--no-warnings", "--import", (HERE / "request_timeout.mjs").as_uri(), "cli.mjs"]
        client = procs.start(client_cmd, None if args.id else client_log, cwd=package, env=env)
        while client.poll() is None:
            if time.monotonic() > deadline:
                raise RunError(f"the suite did not finish within {args.timeout:.0f} s (see --timeout; "
                               f"a slow test can be run alone with --id)")
            if edge is not None and edge.poll() is not None:
                if not args.keep_going:
                    raise RunError(f"the edge exited with code {edge.returncode} during the run "
                                   f"(--keep-going restarts it):\n{tail(edge_log)}")
                restarts += 1
                print(f"conformance: the edge exited with code {edge.returncode}; restarting it", file=sys.stderr)
                edge = start_edge()
            time.sleep(0.2)
        if restarts:
            print(f"conformance: the edge was restarted {restarts} time(s) during the run", file=sys.stderr)

    if args.id:
        dump = [line for line in origin_log.read_text(errors="replace").splitlines() if not line.startswith("Listening on")]
        print("\n==== What the suite's server (the origin) received and sent\n" + "\n".join(dump))
        return None
    output = client_log.read_text(errors="replace")
    try:
        return json.loads(output[output.index("{"):])
    except ValueError:
        raise RunError(f"the suite's client printed no results (exit code {client.returncode}):\n{tail(output)}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m conformance.run", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--direct", action="store_true", help="no edge: run the suite against its own server")
    target.add_argument("--edge-cmd", metavar="CMD", help="command starting the cache under test, with {port} and "
                        f"{{origin}} placeholders (default: {' '.join(EDGE_CMD)})".replace("%", "%%"))
    target.add_argument("--count-file", metavar="JSON", type=Path,
                        help="count a results file (e.g. results/nginx.json from the suite) instead of running")
    parser.add_argument("--edge-arg", metavar="ARG", action="append", default=[],
                        help="extra argument for the edge command (repeatable), e.g. --edge-arg=--log-level=info")
    parser.add_argument("--id", metavar="TEST", help="run one test and print the suite's request/response dump")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if below {FLOOR.relative_to(ROOT)}")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--keep-going", action="store_true", help="restart the edge if it exits during the run "
                        "(default: stop the run)")
    parser.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                        help="bound on the whole run, from start-up to results (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.id and (args.check or args.count_file):
        parser.error("--id runs a single test; it cannot be combined with --check or --count-file")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 done (and at or above the floor with --check), 1 below the floor, 2 run failed."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that children are stopped on SIGTERM too
    try:
        package = ensure_suite()
        tests = list_tests(package)
        if args.count_file:
            path = args.count_file if args.count_file.exists() else package / args.count_file
            results, label = json.loads(path.read_text()), str(args.count_file)
        else:
            if args.id and args.id not in tests:
                raise RunError(f"no test {args.id!r} in {SUITE} {VERSION}")
            if args.id and tests[args.id]["browser_only"]:
                raise RunError(f"{args.id} is browser-only: the suite does not run it outside a browser")
            started = time.monotonic()
            results = run_suite(args, package)
            if results is None:
                return 0
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")
            target = "no cache (--direct)" if args.direct else "--edge-cmd" if args.edge_cmd else "edge"
            label = f"{target}, {time.monotonic() - started:.0f} s, results in {RESULTS.relative_to(ROOT)}"
    except RunError as exc:
        print(f"conformance: ERROR: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("conformance: interrupted", file=sys.stderr)
        return 130
    summary = summarize(tests, results)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        report(summary, label)
    return check_floor(summary) if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
