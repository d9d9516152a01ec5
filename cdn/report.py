"""The workload report (`cdn.workload`'s dict) for people: a terminal summary, one self-contained HTML page, a PNG chart.

The HTML page draws its charts as inline SVG and carries its styles inline,
so it opens anywhere with nothing beside it. The PNG (hit ratio and origin
requests per second over time) is drawn by matplotlib's Agg renderer, imported
only when a PNG is asked for.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Report = Mapping[str, Any]
OUTCOME_WORDS = (("misses", "miss"), ("passes", "pass"), ("refused", "refused"), ("errors", "error"))
COLOURS = {"hit": "#2a9d8f", "origin": "#e76f51", "requests": "#8d99ae", "marker": "#6d597a"}
STALE_REASONS = ("stale-while-revalidate", "stale-if-error")


# -- numbers as words ---------------------------------------------------------------------------------


def percent(ratio: float | None) -> str:
    """0.9731 -> "97.3%"; None -> "unknown"."""
    return "unknown" if ratio is None else f"{ratio * 100:.1f}%"


def count(n: int | None) -> str:
    """Thousands separated; None -> "unknown"."""
    return "unknown" if n is None else f"{n:,}"


def size(n: int | None) -> str:
    """Bytes as B, kB, MB or GB (powers of 1000)."""
    if n is None:
        return "unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def ms(value: float | None) -> str:
    """Milliseconds with sensible precision; None -> "-"."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def requests_sum(requests: Mapping[str, Any]) -> str:
    """"N = hits + misses + passes + refused + errors", stale counted among the hits."""
    hits = requests["hit"] + requests["stale"]
    stale = f" ({count(requests['stale'])} of them stale)" if requests["stale"] else ""
    rest = " + ".join(f"{count(requests[key])} {word}" for word, key in OUTCOME_WORDS)
    return f"{count(requests['total'])} = {count(hits)} hits{stale} + {rest}"


def offload_lines(report: Report) -> list[tuple[str, str]]:
    """(headline, detail) for offload by requests and bytes, the best possible, and how close the run came."""
    origin, ideal, requests = report["origin"], report["ideal"], report["requests"]
    shared, per_edge = ideal["shared_cache"], ideal["per_edge_cache"]
    reasons = shared["forced_by"]
    lines = [
        (f"origin offload: {percent(origin['offload_requests'])} of requests",
         f"{count(origin['requests'])} origin requests for {count(requests['total'])} client requests"
         if origin["requests"] is not None else "the origin's /_origin/stats could not be read"),
        (f"origin offload: {percent(origin['offload_bytes'])} of bytes",
         f"{size(origin['bytes'])} from the origin for {size(requests['bytes'])} delivered"
         if origin["bytes"] is not None else "the origin's /_origin/stats could not be read"),
        (f"best possible offload: {percent(shared['offload'])} of requests; "
         f"we came to {percent(ideal['achieved_of_best'])} of the best possible",
         f"an ideal cache shared by every edge needs {count(shared['origin_fetches'])} origin fetches: "
         f"{count(reasons['first'])} first requests, {count(reasons['expiry'])} expiries, "
         f"{count(reasons['purge'])} after purges, {count(reasons['uncacheable'])} uncacheable"),
        (f"best possible with a cache per edge: {percent(per_edge['offload'])} of requests; "
         f"we came to {percent(ideal['achieved_of_best_per_edge'])} of it",
         f"with each edge its own ideal cache, {count(per_edge['origin_fetches'])} origin fetches: every edge "
         "fetches an object once for itself (a shield tier moves the run toward the shared bound)"),
    ]
    return lines


def stale_summary(stale: Mapping[str, Any]) -> str:
    """Stale answers by Cache-Status detail, the allowed reasons always named."""
    reasons = {reason: 0 for reason in STALE_REASONS} | dict(stale["by_reason"])
    return ", ".join(f"{reason} {count(n)}" for reason, n in reasons.items())


def _rows(groups: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    return [[name, count(g["total"]), count(g["hit"] + g["stale"]), count(g["miss"]), count(g["pass"]),
             count(g["refused"]), count(g["error"]), percent(g["hit_ratio"])] for name, g in groups.items()]


GROUP_HEADINGS = ["requests", "hits", "misses", "passes", "refused", "errors", "hit ratio"]


def _latency_rows(report: Report) -> list[list[str]]:
    latency = report["latency"]
    modelled = latency.get("modelled_origin_ms") or {}
    rows = [[region, ms(s["p50"]), ms(s["p95"]), ms(s["p99"]), ms(modelled.get(region))]
            for region, s in latency["by_region"].items()]
    overall = latency["client_to_edge_ms"]
    rows.append(["all", ms(overall["p50"]), ms(overall["p95"]), ms(overall["p99"]), ""])
    return rows


def _propagation(purges: Mapping[str, Any]) -> str:
    each, last = purges["propagation_ms"], purges["complete_ms"]
    if not each["count"]:
        return "no acknowledgements recorded"
    return (f"p50 {ms(each['p50'])} ms, p99 {ms(each['p99'])} ms per edge; every edge: p50 {ms(last['p50'])} ms, "
            f"p99 {ms(last['p99'])} ms ({count(purges['acknowledged'])} of {count(purges['changes'])} changes "
            f"acknowledged, {count(purges['incomplete'])} incomplete)")


def _refused_by_client(report: Report) -> list[list[str]]:
    clients = {c["address"]: c for c in report["clients"]}
    return [[address, clients.get(address, {}).get("kind", "?"), count(n),
             count(clients.get(address, {}).get("requests"))] for address, n in report["shield"]["by_client"].items()]


# -- terminal -----------------------------------------------------------------------------------------


def table(headings: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Plain-text columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headings, *rows)]
    lines = []
    for row in [list(headings), *rows]:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def render_terminal(report: Report) -> str:
    """A readable summary of the report for a terminal."""
    run, requests, shield = report["run"], report["requests"], report["shield"]
    generator = report["generator"]
    lines = [f"{run['duration_s']:.0f} s against {run['front_door']}: {len(report['by_region'])} regions, "
             f"{len([e for e in report['by_edge'] if e != 'unknown'])} edges, {len(report['clients'])} clients", ""]
    lines.append(f"requests: {requests_sum(requests)}")
    lines.append(f"hit ratio: {percent(requests['hit_ratio'])} (hits / (hits + misses))")
    lines.append("")
    for headline, detail in offload_lines(report):
        lines += [headline, f"  {detail}"]
    lines += ["", "hit ratio by edge:", *table(["edge", *GROUP_HEADINGS], _rows(report["by_edge"]))]
    lines += ["hit ratio by client region:", *table(["region", *GROUP_HEADINGS], _rows(report["by_region"]))]
    lines += ["", "latency, ms: client -> edge (measured) and client -> origin (modelled round trip):",
              *table(["region", "p50", "p95", "p99", "origin"], _latency_rows(report))]
    lines += ["", f"purge propagation: {_propagation(report['purges'])}",
              f"stale served: {stale_summary(report['stale'])}",
              f"  older than an acknowledged purge: {count(report['stale']['older_than_acknowledged_purge'])}"]
    by_status = ", ".join(f"{status}: {count(n)}" for status, n in shield["by_status"].items())
    lines.append(f"refused by the shield: {count(shield['refused'])}" + (f" ({by_status})" if by_status else ""))
    if shield["by_client"]:
        lines += table(["client", "kind", "refused", "of requests"], _refused_by_client(report))
    lines += ["", f"generator: {_generator(generator)}"]
    if _fell_behind(report):
        lines.append("  the generator fell behind: its concurrency bound or this machine, not only the CDN, set the pace")
    return "\n".join(lines) + "\n"


def _generator(generator: Mapping[str, Any]) -> str:
    return (f"{generator['achieved_rate']} requests/s sent (target {generator['target_rate']:g} + "
            f"{generator['abusive_rate']:g} abusive), {count(generator['late_sends'])} sent late, "
            f"{count(generator.get('skipped', 0))} skipped, max lag {ms(generator['max_lag_ms'])} ms")


def _fell_behind(report: Report) -> bool:
    """More than 1% of requests sent late or not at all."""
    generator = report["generator"]
    return generator["late_sends"] + generator.get("skipped", 0) > 0.01 * max(report["requests"]["total"], 1)


# -- SVG charts ---------------------------------------------------------------------------------------


def nice_ticks(top: float, n: int = 5) -> list[float]:
    """Round tick values from 0 to at least `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / n
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:g}" if value < 1e6 else f"{value:.0e}"


class Plot:
    """An SVG drawing area with linear or logarithmic axes."""

    def __init__(self, width: int = 720, height: int = 260, left: int = 56, right: int = 56, top: int = 28,
                 bottom: int = 40) -> None:
        self.width, self.height = width, height
        self.x0, self.x1, self.y0, self.y1 = left, width - right, height - bottom, top
        self.parts: list[str] = []

    def scale(self, lo: float, hi: float, a: float, b: float, log: bool = False) -> Callable[[float], float]:
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        span = (hi - lo) or 1.0
        return lambda v: a + ((math.log10(max(v, 1e-12)) if log else v) - lo) / span * (b - a)

    def text(self, x: float, y: float, content: str, anchor: str = "middle", size: int = 11, colour: str = "#333",
             rotate: bool = False) -> None:
        turn = f' transform="rotate(-90 {x:.1f} {y:.1f})"' if rotate else ""
        self.parts.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
                          f'fill="{colour}"{turn}>{html.escape(content)}</text>')

    def line(self, x1: float, y1: float, x2: float, y2: float, colour: str = "#ccc", dash: str = "",
             width: float = 1) -> None:
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
                          f'stroke-width="{width}"{dashed}/>')

    def polyline(self, points: Sequence[tuple[float, float]], colour: str, dash: str = "") -> None:
        if not points:
            return
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        self.parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"{dashed}/>')

    def rect(self, x: float, y: float, w: float, h: float, colour: str) -> None:
        self.parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" '
                          f'fill="{colour}"/>')

    def y_axis(self, ticks: Sequence[float], to_y: Callable[[float], float], label: str, right: bool = False,
               fmt: Callable[[float], str] = _label, colour: str = "#333") -> None:
        x = self.x1 if right else self.x0
        for tick in ticks:
            y = to_y(tick)
            if not right:
                self.line(self.x0, y, self.x1, y, "#eee")
            self.text(x + (6 if right else -6), y + 4, fmt(tick), "start" if right else "end", 10, colour)
        self.text(x + (44 if right else -44), (self.y0 + self.y1) / 2, label, colour=colour, rotate=True)

    def x_axis(self, ticks: Sequence[float], to_x: Callable[[float], float], label: str,
               fmt: Callable[[float], str] = _label) -> None:
        self.line(self.x0, self.y0, self.x1, self.y0, "#999")
        for tick in ticks:
            x = to_x(tick)
            self.line(x, self.y0, x, self.y0 + 4, "#999")
            self.text(x, self.y0 + 16, fmt(tick), size=10)
        self.text((self.x0 + self.x1) / 2, self.height - 6, label)

    def legend(self, entries: Sequence[tuple[str, str, str]]) -> None:
        x = self.x0
        for name, colour, dash in entries:
            self.line(x, 12, x + 18, 12, colour, dash, 2)
            self.text(x + 22, 16, name, "start", 11)
            x += 30 + 7 * len(name)

    def svg(self, title: str) -> str:
        return (f'<svg viewBox="0 0 {self.width} {self.height}" width="{self.width}" height="{self.height}" '
                f'role="img" aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>'
                + "".join(self.parts) + "</svg>")


def timeline_chart(report: Report) -> str:
    """Hit ratio (left axis) and requests per second to the CDN and to the origin (right axis) over time."""
    timeline = report["timeline"]
    plot = Plot()
    if not timeline:
        return plot.svg("no timeline")
    end = max(len(timeline), 1)
    to_x = plot.scale(0, end, plot.x0, plot.x1)
    to_ratio = plot.scale(0, 100, plot.y0, plot.y1)
    top = max([row["requests"] for row in timeline] + [row["origin_requests"] or 0 for row in timeline] + [1])
    rate_ticks = nice_ticks(top)
    to_rate = plot.scale(0, rate_ticks[-1], plot.y0, plot.y1)
    plot.y_axis([0, 25, 50, 75, 100], to_ratio, "hit ratio, %", colour=COLOURS["hit"])
    plot.y_axis(rate_ticks, to_rate, "requests per second", right=True)
    plot.x_axis(nice_ticks(end, 8), to_x, "seconds since the start")
    mid = [(row["t"] + 0.5, row) for row in timeline]
    plot.polyline([(to_x(t), to_rate(row["requests"])) for t, row in mid], COLOURS["requests"], "4 3")
    plot.polyline([(to_x(t), to_rate(row["origin_requests"])) for t, row in mid if row["origin_requests"] is not None],
                  COLOURS["origin"])
    plot.polyline([(to_x(t), to_ratio(row["hit_ratio"] * 100)) for t, row in mid if row["hit_ratio"] is not None],
                  COLOURS["hit"])
    plot.legend([("hit ratio", COLOURS["hit"], ""), ("origin requests/s", COLOURS["origin"], ""),
                 ("client requests/s", COLOURS["requests"], "4 3")])
    return plot.svg("hit ratio and requests per second over time")


def latency_chart(report: Report) -> str:
    """Histogram of client -> edge latency on a log axis, with each region's modelled client -> origin round trip."""
    histogram = report["latency"]["histogram"]
    bounds, counts = histogram["bounds_ms"], histogram["counts"]
    modelled = report["latency"].get("modelled_origin_ms") or {}
    plot = Plot(height=280)
    to_x = plot.scale(bounds[0], bounds[-1], plot.x0, plot.x1, log=True)
    ticks = nice_ticks(max([*counts, 1]))
    to_y = plot.scale(0, ticks[-1], plot.y0, plot.y1)
    plot.y_axis(ticks, to_y, "requests")
    decades = [10.0**e for e in range(math.ceil(math.log10(bounds[0])), math.floor(math.log10(bounds[-1])) + 1)]
    plot.x_axis(decades, to_x, "milliseconds (log scale)")
    for lo, hi, n in zip(bounds, bounds[1:], counts):
        if n:
            plot.rect(to_x(lo) + 0.5, to_y(n), to_x(hi) - to_x(lo) - 1, plot.y0 - to_y(n), COLOURS["hit"])
    for i, (region, value) in enumerate(sorted(modelled.items(), key=lambda item: item[1])):
        if value and bounds[0] <= value <= bounds[-1]:
            x = to_x(value)
            plot.line(x, plot.y0, x, plot.y1, COLOURS["marker"], "5 3", 1.5)
            plot.text(x + 3, plot.y1 + 12 + 12 * (i % 4), f"{region} origin {ms(value)} ms", "start", 10, COLOURS["marker"])
    plot.legend([("client -> edge (measured)", COLOURS["hit"], ""),
                 ("client -> origin (modelled round trip)", COLOURS["marker"], "5 3")])
    return plot.svg("latency: client to edge, measured, and client to origin, modelled")


# -- HTML ---------------------------------------------------------------------------------------------

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       margin: 2em auto; max-width: 980px; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.headline { font-size: 1.25em; font-weight: 600; margin: .3em 0 0; } .detail { color: #555; margin: 0 0 .6em; }
.bad { color: #b00020; font-weight: 600; } .good { color: #1b7f3b; font-weight: 600; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { padding: .2em .8em; text-align: right; border-bottom: 1px solid #eee; }
td:first-child, th:first-child { text-align: left; } th { font-weight: 600; background: #f6f6f6; }
svg { max-width: 100%; height: auto; font-family: inherit; } .muted { color: #777; }
"""

def html_table(headings: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table, every cell escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: Report, png_name: str | None = None) -> str:
    """One self-contained HTML page: charts as inline SVG, styles inline, no external references."""
    e = html.escape
    run, requests, stale, shield = report["run"], report["requests"], report["stale"], report["shield"]
    offending = stale["older_than_acknowledged_purge"]
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>CDN workload report</title>"
             f"<style>{STYLE}</style></head><body>",
             "<h1>CDN workload report</h1>",
             f"<p class=\"muted\">{run['duration_s']:.0f} s against {e(run['front_door'])}; "
             f"{len(report['by_region'])} regions, {len(report['clients'])} clients; "
             f"seed {e(str(run['config'].get('seed')))}</p>",
             "<h2>Origin offload</h2>"]
    for headline, detail in offload_lines(report):
        parts.append(f"<p class=\"headline\">{e(headline)}</p><p class=\"detail\">{e(detail)}</p>")
    parts += [f"<p>requests: {e(requests_sum(requests))}<br>hit ratio: {percent(requests['hit_ratio'])} "
              "(hits / (hits + misses))</p>",
              "<h2>Over time</h2>", timeline_chart(report),
              "<h2>Hit ratio by edge</h2>", html_table(["edge", *GROUP_HEADINGS], _rows(report["by_edge"])),
              "<h2>Hit ratio by client region</h2>", html_table(["region", *GROUP_HEADINGS], _rows(report["by_region"])),
              "<h2>Latency</h2>", latency_chart(report),
              html_table(["region", "p50 ms", "p95 ms", "p99 ms", "client → origin ms (modelled)"], _latency_rows(report)),
              "<h2>Purges and staleness</h2>",
              f"<p>purge propagation: {e(_propagation(report['purges']))}</p>",
              f"<p>stale served: {e(stale_summary(stale))}<br>older than an acknowledged purge: "
              f"<span class=\"{'bad' if offending else 'good'}\">{count(offending)}</span></p>"]
    if stale["examples"]:
        parts.append(html_table(["url", "version", "edge", "sent"],
                                [[x["url"], str(x["version"]), x["edge"] or "?", f"{x['sent']:.3f}"] for x in stale["examples"]]))
    parts.append("<h2>Shield</h2>")
    by_status = ", ".join(f"{status}: {count(n)}" for status, n in shield["by_status"].items())
    parts.append(f"<p>refused by the shield: {count(shield['refused'])}" + (f" ({e(by_status)})" if by_status else "") + "</p>")
    if shield["by_client"]:
        parts.append(html_table(["client", "kind", "refused", "of requests"], _refused_by_client(report)))
    generator = report["generator"]
    behind = " The generator fell behind: its concurrency bound or this machine, not only the CDN, set the pace."
    parts.append(f"<p class=\"muted\">generator: {e(_generator(generator))}.{behind if _fell_behind(report) else ''}")
    if png_name:
        parts.append(f" The main chart as a PNG: {e(png_name)}, beside this file.")
    parts.append("</p></body></html>\n")
    return "".join(parts)


# -- PNG ----------------------------------------------------------------------------------------------


def render_png(report: Report, path: str) -> None:
    """Write the main chart (hit ratio and origin requests per second over time) as a PNG."""
    from matplotlib.figure import Figure  # heavy: only when a PNG is wanted; Figure needs no pyplot or GUI backend

    timeline = report["timeline"]
    seconds = [row["t"] + 0.5 for row in timeline]
    figure = Figure(figsize=(9, 4), dpi=100, layout="constrained")
    ratio_axis = figure.add_subplot()
    rate_axis = ratio_axis.twinx()
    ratio_axis.plot([t for t, row in zip(seconds, timeline) if row["hit_ratio"] is not None],
                    [row["hit_ratio"] * 100 for row in timeline if row["hit_ratio"] is not None],
                    color=COLOURS["hit"], linewidth=2, label="hit ratio")
    rate_axis.plot([t for t, row in zip(seconds, timeline) if row["origin_requests"] is not None],
                   [row["origin_requests"] for row in timeline if row["origin_requests"] is not None],
                   color=COLOURS["origin"], linewidth=2, label="origin requests/s")
    rate_axis.plot(seconds, [row["requests"] for row in timeline], color=COLOURS["requests"], linewidth=1.2,
                   linestyle="--", label="client requests/s")
    ratio_axis.set_ylim(0, 100)
    rate_axis.set_ylim(bottom=0)
    ratio_axis.set_xlim(0, max(len(timeline), 1))
    ratio_axis.set_xlabel("seconds since the start")
    ratio_axis.set_ylabel("hit ratio, %", color=COLOURS["hit"])
    rate_axis.set_ylabel("requests per second")
    ratio_axis.grid(True, alpha=0.3)
    offload = report["origin"]["offload_requests"]
    ratio_axis.set_title(f"origin offload {percent(offload)} of requests, hit ratio {percent(report['requests']['hit_ratio'])}")
    lines = ratio_axis.get_lines() + rate_axis.get_lines()
    figure.legend(lines, [str(line.get_label()) for line in lines], loc="outside lower center", ncols=3, fontsize=9,
                  frameon=False)
    figure.savefig(path, format="png")
