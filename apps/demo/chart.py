"""A dependency-free SVG picture of a crash-demo run: jobs done over time per backend, with the
kill and the restart marked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 860, 420
LEFT, RIGHT, TOP, BOTTOM = 60, 190, 40, 50
COLORS = ["#d1495b", "#2e86ab", "#8a8a8a", "#edae49", "#66a182", "#7b2d8b", "#1b4965"]


def render(runs: Sequence[dict[str, Any]], title: str) -> str:
    """SVG text for ``runs``: each has ``label``, ``submitted``, ``timeline`` [[t, done], ...],
    ``kill_t`` and ``restart_t`` (seconds since the demo started), ``completed``, ``lost`` and
    ``error``."""
    t_max = float(max([p[0] for r in runs for p in r["timeline"]] + [1.0]))
    y_max = max([int(r["submitted"]) for r in runs] + [1])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + plot_w * t / t_max

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / y_max)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" '
        'stroke="black"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="black"/>',
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 12}" text-anchor="middle">'
        "seconds since the first job was submitted</text>",
        f'<text x="16" y="{TOP + plot_h / 2}" transform="rotate(-90 16 {TOP + plot_h / 2})" '
        'text-anchor="middle">jobs done</text>',
    ]
    for i in range(5):
        v = y_max * i / 4
        parts.append(f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
        t = t_max * i / 4
        parts.append(
            f'<text x="{x(t):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{t:.0f}</text>'
        )
    for n, run in reversed(list(enumerate(runs))):  # the first run is drawn on top
        color = COLORS[n % len(COLORS)]
        timeline = list(run["timeline"])
        if timeline:  # a finished run stays at its final count to the end of the picture
            timeline.append([t_max, timeline[-1][1]])
        points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in timeline)
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2.5"/>'
        )
        for key, dash, name in (("kill_t", "4 3", "kill"), ("restart_t", "1 3", "restart")):
            if run.get(key) is not None:
                xv = x(run[key])
                parts.append(
                    f'<line x1="{xv:.1f}" y1="{TOP}" x2="{xv:.1f}" y2="{TOP + plot_h}" '
                    f'stroke="{color}" stroke-dasharray="{dash}"/>'
                )
                parts.append(
                    f'<text x="{xv + 3:.1f}" y="{TOP + 12 + 14 * n}" fill="{color}">{name}</text>'
                )
        ly = TOP + 20 + 48 * n
        lx = WIDTH - RIGHT + 16
        parts.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{color}"/>')
        parts.append(f'<text x="{lx + 18}" y="{ly}">{escape(str(run["label"]))}</text>')
        parts.append(_outcome(run, lx + 18, ly + 16))
    parts.append("</svg>")
    return "\n".join(parts)


ERROR_CHARS = 26  # what fits in the legend's width; the table and --json say the whole reason


def _outcome(run: dict[str, Any], x: float, y: float) -> str:
    """The legend's second line: ``done N, lost M``, or ``error: <reason>`` for a run that could
    not run to the end (never a ``lost 0`` it did not measure)."""
    if run.get("skipped"):
        return f'<text x="{x}" y="{y}" fill="#8a8a8a">{escape(str(run["skipped"])[:ERROR_CHARS])}</text>'
    if run.get("held"):
        return (
            f'<text x="{x}" y="{y}">done {run.get("completed")}, lost {run.get("lost")}, '
            f"held {run['held']}</text>"
        )
    error = run.get("error")
    if error:
        short = error if len(error) <= ERROR_CHARS else error[: ERROR_CHARS - 1] + "…"
        return (
            f'<text x="{x}" y="{y}" fill="#b00020"><title>error: {escape(error)}</title>'
            f"error: {escape(short)}</text>"
        )
    return f'<text x="{x}" y="{y}">done {run.get("completed")}, lost {run.get("lost")}</text>'
