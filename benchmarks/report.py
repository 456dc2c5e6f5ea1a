"""Turn results into checks against the targets, a text table per section and RESULTS.md.

What each section checks and shows is its own (``benchmarks/views/``); this module only runs the
checks and renders the tables, as text for the terminal and as Markdown for RESULTS.md.
"""

from __future__ import annotations

from typing import Any

from benchmarks.views import SECTIONS, Table


def checks(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target, the value measured in this run, and whether it was met. A section that was
    not run has no checks; one that failed has one, missed, naming the error."""
    out: list[dict[str, Any]] = []

    def check(name: str, value: float, target: float, op: str = ">=", note: str = "") -> None:
        met = {">=": value >= target, "<=": value <= target, "==": value == target}[op]
        out.append({"target": f"{name} {op} {target:g}", "value": value, "met": met, "note": note})

    for section in SECTIONS:
        if section.key not in r:
            continue
        if "error" in r[section.key]:
            check(f"section {section.key} ran", 0, 1, note=r[section.key]["error"])
        elif section.checks is not None:
            section.checks(r, check)
    return out


def tables(r: dict[str, Any]) -> list[Table]:
    """Each section's tables, for the sections that ran; a failed section is a line saying so."""
    out: list[Table] = []
    for section in SECTIONS:
        if section.key not in r:
            continue
        if "error" in r[section.key]:
            out.append((section.title, ["failed"], [[r[section.key]["error"]]], []))
        else:
            out += section.tables(r)
    return out


def _machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['cores']} cores ({m['cpu']}), {m['os']}, {m['implementation']} {m['python']}, "
        f"Redis {m['redis']}, {m['date']}; load average at start {m['load_avg_at_start']}, "
        f"at end {m.get('load_avg_at_end', '?')} (shared machine)"
    )


def _text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def text(r: dict[str, Any]) -> str:
    parts = [f"Machine: {_machine_line(r['machine'])}", ""]
    for title, headers, rows, notes in tables(r):
        parts += [title, _text_table(headers, rows), *(f"  {n}" for n in notes), ""]
    parts.append("Targets")
    for c in r["checks"]:
        note = f" ({c['note']})" if c.get("note") else ""
        parts.append(f"  [{'met' if c['met'] else 'MISSED'}] {c['target']}: {c['value']:g}{note}")
    return "\n".join(parts)


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def markdown(r: dict[str, Any]) -> str:
    quick = " (--quick: tiny sizes, not for quoting)" if r["quick"] else ""
    parts = [
        f"# Benchmark results{quick}",
        "",
        f"Machine: {_machine_line(r['machine'])}. Whole run: {r['total_s']} s.",
        "",
        "Rerun: `python -m benchmarks` (add `--big` for N=100,000 in section 3). Every comparison "
        "is a ratio against a baseline measured in the same run.",
        "",
    ]
    for title, headers, rows, notes in tables(r):
        parts += [f"## {title}", "", _md_table(headers, rows), "", *notes, ""]
    parts += [
        "## Targets",
        "",
        _md_table(
            ["target", "measured", "met", "context"],
            [
                [c["target"], f"{c['value']:g}", "yes" if c["met"] else "**no**", c.get("note", "")]
                for c in r["checks"]
            ],
        ),
        "",
    ]
    return "\n".join(parts)
