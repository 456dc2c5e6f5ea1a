"""Draw one trace's received spans as a timeline (SVG): the picture in docs/tracing.md.

No trace viewer runs here, so the picture is drawn from what the test's OTLP receiver decoded:
one row per span, indented under its parent, a bar from its start to its end on a shared time
axis, coloured by the process (``service.name``) that exported it. A lost attempt (a worker
SIGKILLed mid-fetch exports nothing) is drawn from the upstream witness's record of its fetch
as a hatched bar ending at the kill.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from tests.support.otlp_receiver import ReceivedSpan

COLOURS = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2"]
ROW, LEFT, WIDTH, TOP, RIGHT = 26, 480, 560, 58, 70


@dataclass(frozen=True)
class Lost:
    """What is known of an attempt whose process died: its fetch's start (at the upstream) and
    the kill, unix nanoseconds."""

    label: str
    start_ns: int
    end_ns: int


def _label(span: ReceivedSpan) -> str:
    attempt = span.attributes.get("queue_contrast.attempt")
    extra = f" (attempt {attempt})" if attempt is not None else ""
    if span.attributes.get("queue_contrast.redelivered"):
        extra += ", re-delivered"
    return f"{span.name}{extra}"


def _ordered(spans: list[ReceivedSpan]) -> list[tuple[int, ReceivedSpan]]:
    """Depth-first from the roots (a span whose parent was not received is a root), by start."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        children.setdefault(s.parent_span_id if s.parent_span_id in ids else "", []).append(s)
    out: list[tuple[int, ReceivedSpan]] = []

    def walk(parent: str, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda x: x.start_ns):
            out.append((depth, s))
            walk(s.span_id, depth + 1)

    walk("", 0)
    return out


def render_svg(spans: list[ReceivedSpan], lost: Lost | None = None, title: str = "") -> str:
    """The SVG text of the timeline."""
    rows = _ordered(spans)
    starts = [s.start_ns for _, s in rows] + ([lost.start_ns] if lost else [])
    ends = [s.end_ns for _, s in rows] + ([lost.end_ns] if lost else [])
    t0, t1 = min(starts), max(ends)
    scale = WIDTH / max(t1 - t0, 1)
    services = sorted({s.service for _, s in rows})
    colour = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(services)}
    n = len(rows) + (1 if lost else 0)
    height = TOP + n * ROW + 70
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{LEFT + WIDTH + RIGHT}" height="{height}" '
        'font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="3" height="6" fill="#e45756"/></pattern></defs>',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<text x="10" y="42" fill="#555">trace {escape(rows[0][1].trace_id)} · '
        f"{(t1 - t0) / 1e9:.2f} s · one row per span, indented under its parent</text>",
    ]
    y = TOP
    placed: list[tuple[int, ReceivedSpan | Lost]] = list(rows)
    if lost is not None:
        # the lost attempt sits where it happened: before the re-delivered one
        at = next(
            (i for i, (_, s) in enumerate(rows) if s.attributes.get("queue_contrast.redelivered")),
            len(rows),
        )
        depth = rows[at][0] if at < len(rows) else 1
        placed.insert(at, (depth, lost))
    for depth, item in placed:
        x = LEFT + (item.start_ns - t0) * scale
        w = max((item.end_ns - item.start_ns) * scale, 2)
        ms = (item.end_ns - item.start_ns) / 1e6
        if isinstance(item, Lost):
            name, fill, who = item.label, "url(#hatch)", "killed worker: nothing exported"
        else:
            name, fill, who = _label(item), colour[item.service], item.service
            if item.status == "ERROR":
                who += " · error"
        out.append(
            f'<text x="{10 + depth * 14}" y="{y + 16}">{escape(name)}'
            f'<tspan fill="#777"> · {escape(who)}</tspan></text>'
        )
        out.append(
            f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{ROW - 9}" rx="3" '
            f'fill="{fill}" stroke="#333" stroke-width="0.5"/>'
        )
        out.append(f'<text x="{x + w + 4:.1f}" y="{y + 16}" fill="#333">{ms:.0f} ms</text>')
        y += ROW
    if lost is not None:  # the kill, across every row
        kx = LEFT + (lost.end_ns - t0) * scale
        out.append(
            f'<line x1="{kx:.1f}" y1="{TOP}" x2="{kx:.1f}" y2="{y}" stroke="#e45756" '
            'stroke-dasharray="4 3"/>'
        )
        out.append(f'<text x="{kx + 4:.1f}" y="{y + 14}" fill="#e45756">SIGKILL</text>')
    legend_y = y + 34
    x = 10
    for name in services:
        out.append(
            f'<rect x="{x}" y="{legend_y - 11}" width="12" height="12" fill="{colour[name]}"/>'
        )
        out.append(f'<text x="{x + 16}" y="{legend_y}">{escape(name)}</text>')
        x += 30 + 8 * len(name)
    if lost is not None:
        out.append(f'<rect x="{x}" y="{legend_y - 11}" width="12" height="12" fill="url(#hatch)"/>')
        out.append(
            f'<text x="{x + 16}" y="{legend_y}">SIGKILLed attempt (from the upstream)</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_svg(path: str, spans: list[ReceivedSpan], lost: Lost | None, title: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_svg(spans, lost, title))
