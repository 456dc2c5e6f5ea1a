// Shared by the dashboard and the crash-demo page. pipeline/dashboard.py (load_page) inlines it
// where an HTML page says /*include chart.js*/, so each page stays one self-contained file.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

// A tick step from 1, 2 or 5 × 10^k giving at most 5 intervals, and the axis top it implies.
function niceAxis(v) {
  let step = 1;
  for (let p = 1; ; p *= 10) {
    const found = [1, 2, 5].map((m) => m * p).find((st) => v / st <= 5);
    if (found) { step = found; break; }
  }
  return {step, top: Math.max(step, Math.ceil(v / step) * step)};
}

function fmtSpan(s) {
  return s >= 60 ? `${Math.round(s / 6) / 10} min` : `${Math.round(s)} s`;
}

// drawChart(svg, {x0, x1, series: [{name, color, points: [[x, y|null], ...], dash}],
//                 marks: [{x, label, color, row, side}], xLabel: (x) => string, yMin, width, height})
// yMin: the y axis reaches at least this far (say, the number of jobs); mark.row stacks labels,
// mark.side "left" puts a label before its line (default: after it).
// A null y breaks the line (the service did not answer). x and y are plain numbers; colors may
// be CSS variables (they are set as style, not as presentation attributes).
function drawChart(svg, opts) {
  const W = opts.width || 640, H = opts.height || 190, L = 44, R = 10, T = 12, B = 24;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const x0 = opts.x0, x1 = Math.max(opts.x1, opts.x0 + 1e-9);
  let ymax = opts.yMin || 0;
  for (const s of opts.series) for (const [, y] of s.points) if (y !== null) ymax = Math.max(ymax, y);
  const axis = niceAxis(ymax);
  ymax = axis.top;
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const Y = (y) => H - B - (y / ymax) * (H - T - B);
  for (let v = 0; v <= ymax; v += axis.step) {
    svg.appendChild(svgEl("line", {x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: "grid"}));
    svg.appendChild(svgEl("text", {x: L - 6, y: Y(v) + 4, "text-anchor": "end", class: "tick"},
      String(v)));
  }
  const xl = opts.xLabel || ((x) => String(x));
  svg.appendChild(svgEl("text", {x: L, y: H - 6, class: "tick"}, xl(x0)));
  svg.appendChild(svgEl("text", {x: W - R, y: H - 6, "text-anchor": "end", class: "tick"}, xl(x1)));
  for (const m of opts.marks || []) {
    if (m.x < x0 || m.x > x1) continue;
    svg.appendChild(svgEl("line", {x1: X(m.x), x2: X(m.x), y1: T, y2: H - B,
      style: `stroke: ${m.color}`, "stroke-width": 2, "stroke-dasharray": "4 3"}));
    const left = m.side === "left";  // label on the left of its line, ending there
    svg.appendChild(svgEl("text", {x: X(m.x) + (left ? -4 : 4), y: T + 10 + 13 * (m.row || 0),
      "text-anchor": left ? "end" : "start", style: `fill: ${m.color}`, class: "mark"}, m.label));
  }
  for (const s of opts.series) {
    let run = [];
    const flush = () => {
      if (run.length) {
        svg.appendChild(svgEl("polyline", {points: run.join(" "), fill: "none", style: `stroke: ${s.color}`,
          "stroke-width": s.width || 2.2, "stroke-dasharray": s.dash || "none",
          "stroke-linejoin": "round", "data-series": s.name}));
      }
      run = [];
    };
    for (const [x, y] of s.points) {
      if (y === null || x < x0) { flush(); continue; }
      run.push(`${X(x).toFixed(1)},${Y(y).toFixed(1)}`);
    }
    flush();
  }
}
