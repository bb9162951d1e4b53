"""`gemma-ref compare --html`: the comparison report as one self-contained HTML page.

No server, no network, no plotting library: the heatmaps are inline SVG. Per prompt:
a heatmap of the relative error by hidden state (rows: embeddings, layers, logits) and
position (columns), the first divergence marked; the per-hidden-state table; the
per-intermediate table when both dumps have traces; top-k overlap, argmax and greedy
agreement. Then the provenance of both sides. Every number shown is one of the report
that `--json` prints (each cell also carries it unrounded in a data-value attribute),
and the whole report is embedded as JSON (script#gemma-ref-report).
"""

from __future__ import annotations

import html
import json
import math

# Colour scale over log10(rel): below the tolerance from pale green (tiny) to yellow (at the
# tolerance), above it from orange to dark red (rel >= 1).
_LOW = [(0.93, 0.97, 0.93), (0.55, 0.80, 0.55), (0.98, 0.90, 0.35)]
_HIGH = [(0.98, 0.60, 0.25), (0.80, 0.15, 0.10), (0.40, 0.00, 0.05)]
_FLOOR = 1e-9  # rel below this is drawn as the palest colour
CELL_H = 14

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 6px;border-top:1px solid #ccc;
padding-top:14px} h3{font-size:15px;margin:16px 0 6px}
.pass{color:#176b2c;font-weight:600} .fail{color:#b3141c;font-weight:600}
table{border-collapse:collapse;margin:4px 0 10px} td,th{border:1px solid #ddd;padding:2px 8px;
text-align:right;font-variant-numeric:tabular-nums} th{background:#f4f4f4} td.name,th.name{text-align:left;
font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px} tr.bad td{background:#fde8e6}
.heat{overflow-x:auto;border:1px solid #eee;padding:4px;max-width:100%} .note{color:#555;font-size:13px}
code{font-size:12px}
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _g(x) -> str:
    """A number as the report's text shows it."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"
    return str(x)


def _num(x, cls: str = "") -> str:
    """A table cell holding a report number: rounded text, exact value in data-value."""
    value = "" if x is None else repr(x)
    c = f' class="{cls}"' if cls else ""
    return f'<td{c} data-value="{_esc(value)}">{_esc(_g(x))}</td>'


def colour(rel: float, rtol: float) -> str:
    """The heatmap colour of one relative error, as #rrggbb."""
    lo, top = math.log10(_FLOOR), math.log10(max(rtol, 2 * _FLOOR))
    x = math.log10(max(rel, _FLOOR)) if math.isfinite(rel) else math.inf
    if x <= top:
        palette, f = _LOW, (x - lo) / (top - lo)
    else:
        palette, f = _HIGH, min((x - top) / max(-top, 1e-9), 1.0)  # rtol .. 1
    f = min(max(f, 0.0), 1.0) * (len(palette) - 1)
    i = min(int(f), len(palette) - 2)
    a, b, t = palette[i], palette[i + 1], f - i
    return "#" + "".join(f"{round(255 * (u + (v - u) * t)):02x}" for u, v in zip(a, b))


def heatmap(entries: list[dict], rtol: float, first: dict | None, prompt: int,
            kind: str = "hidden", cell_h: int = CELL_H) -> str:
    """SVG: one row per compared tensor, one column per position, colour = rel."""
    if not entries:
        return ""
    T = max(len(e["rel"]) for e in entries)  # a row may hold some positions only (None elsewhere)
    w = max(2.0, min(22.0, 900.0 / max(T, 1)))
    label_w, top = 300, 22
    width, height = label_w + w * T + 10, top + cell_h * len(entries) + 6
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" data-kind="{kind}" '
           f'data-prompt="{prompt}" width="{width:.0f}" height="{height}" '
           f'font-family="ui-monospace,Menlo,monospace" font-size="{min(11, cell_h - 2)}">']
    step = max(1, int(math.ceil(40 / w)))
    for t in range(0, T, step):  # position ticks
        x = label_w + w * (t + 0.5)
        out.append(f'<text x="{x:.1f}" y="{top - 6}" text-anchor="middle" fill="#555">{t}</text>')
    for r, e in enumerate(entries):
        y = top + cell_h * r
        out.append(f'<text x="{label_w - 6}" y="{y + cell_h - 2}" text-anchor="end">{_esc(e["name"])}</text>')
        for t, (rel, ab) in enumerate(zip(e["rel"], e["abs"])):
            if rel is None:  # a position this row does not hold: left blank
                continue
            out.append(
                f'<rect x="{label_w + w * t:.2f}" y="{y}" width="{w:.2f}" height="{cell_h}" '
                f'fill="{colour(rel, rtol)}" data-row="{_esc(e["name"])}" data-pos="{t}" '
                f'data-rel="{rel!r}" data-abs="{ab!r}"><title>{_esc(e["name"])}, position {t}: '
                f'rel {_g(rel)}, abs {_g(ab)}</title></rect>')
    if first is not None:  # the first divergence: outlined (and named in the text below the map)
        r = next(i for i, e in enumerate(entries) if e["name"] == first["name"])
        x, y = label_w + w * first["position"], top + cell_h * r
        out.append(f'<rect class="first-divergence" x="{x - 1.5:.2f}" y="{y - 1.5}" '
                   f'width="{w + 3:.2f}" height="{cell_h + 3}" fill="none" stroke="#000" '
                   f'stroke-width="2.5" data-row="{_esc(first["name"])}" data-pos="{first["position"]}"/>')
    out.append("</svg>")
    return "".join(out)


def legend(rtol: float) -> str:
    stops = [1e-9, 1e-7, 1e-5, rtol, min(1.0, rtol * 30), 1.0]
    cells = []
    for i, v in enumerate(stops):
        cells.append(f'<rect x="{i * 70}" y="0" width="70" height="12" fill="{colour(v, rtol)}"/>'
                     f'<text x="{i * 70 + 35}" y="26" text-anchor="middle">{_g(v)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="legend" width="{70 * len(stops)}" height="30" '
            f'font-size="11">{"".join(cells)}</svg>')


def _table(entries: list[dict], kind: str) -> str:
    rows = [f'<table class="{kind}"><tr><th class="name">{"intermediate" if kind == "trace" else "hidden state"}'
            f'</th><th>max abs</th><th>max rel</th><th>worst position</th><th>first failing position</th></tr>']
    for e in entries:
        rows.append(f'<tr class="{"ok" if e["ok"] else "bad"}" data-name="{_esc(e["name"])}">'
                    f'<td class="name">{_esc(e["name"])}</td>{_num(e["max_abs"])}{_num(e["max_rel"])}'
                    f'{_num(e["worst_position"])}{_num(e["first_bad_position"])}</tr>')
    rows.append("</table>")
    return "".join(rows)


def _agreement(p: dict) -> str:
    rows = []
    if "topk_overlap" in p:
        t, a = p["topk_overlap"], p["argmax"]
        rows.append(f'<tr data-name="topk_overlap"><td class="name">top-{t["k"]} overlap (mean, min)</td>'
                    f'{_num(t["mean"])}{_num(t["min"])}</tr>')
        rows.append(f'<tr data-name="argmax"><td class="name">argmax agrees (positions of total; first '
                    f'disagreement)</td>{_num(a["agree"])}{_num(a["total"])}'
                    f'{_num(a["first_disagreement"])}</tr>')
    if "greedy" in p:
        g = p["greedy"]
        rows.append(f'<tr data-name="greedy"><td class="name">greedy continuation (tokens agree of total; '
                    f'first mismatch)</td>{_num(g["agree"])}{_num(g["total"])}{_num(g["first_mismatch"])}</tr>')
    return f'<table class="agreement">{"".join(rows)}</table>' if rows else ""


def _summary(report: dict) -> str:
    """One row per prompt: verdict, first divergence, worst logits error, agreement."""
    rows = ['<table class="summary"><tr><th>prompt</th><th>tokens</th><th>status</th>'
            '<th class="name">first divergence (position)</th><th>max rel, logits</th>'
            '<th>argmax agrees</th><th>greedy agrees</th></tr>']
    for p in report["prompts"]:
        f = p["first_divergence"]
        logits = next((e for e in p["hidden_states"] if e["name"].startswith("logits")), None)
        where = "-" if f is None else f'{_esc(f["name"])} ({f["position"]})'
        a, g = ("-" if x is None else f"{x['agree']}/{x['total']}"
                for x in (p.get("argmax"), p.get("greedy")))
        rows.append(f'<tr class="{"ok" if p["ok"] else "bad"}" data-name="prompt-{p["prompt"]}">'
                    f'<td><a href="#prompt-{p["prompt"]}">{p["prompt"]}</a></td>{_num(p["tokens"])}'
                    f'<td>{"ok" if p["ok"] else "FAIL"}</td><td class="name">{where}</td>'
                    f'{_num(None if logits is None else logits["max_rel"])}'
                    f'<td>{a}</td><td>{g}</td></tr>')
    rows.append("</table>")
    return "".join(rows)


def _provenance(name: str, side: dict) -> str:
    rows = [f'<tr><td class="name">source</td><td class="name">{_esc(side["source"])}</td></tr>']
    for key, value in (side.get("provenance") or {}).items():
        if isinstance(value, dict):
            value = "<br>".join(f"{_esc(k)}: {_esc(v)}" for k, v in value.items())
        else:
            value = _esc(value)
        rows.append(f'<tr><td class="name">{_esc(key)}</td><td class="name">{value}</td></tr>')
    return f'<h3>{name}</h3><table class="provenance" data-side="{name}">{"".join(rows)}</table>'


def render(report: dict, title: str = "gemma-ref compare") -> str:
    """The whole page, from the dict `reference.compare` returns."""
    rtol = report["rtol"]
    n_bad = sum(not p["ok"] for p in report["prompts"])
    n = len(report["prompts"])
    verdict = (f'<span class="pass" id="verdict">PASS</span>: {n} prompt(s) within tolerance' if not n_bad else
               f'<span class="fail" id="verdict">FAIL</span>: {n_bad} of {n} prompt(s) beyond tolerance')
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>{_esc(title)}</h1><p>{verdict}. golden: <code>{_esc(report['golden']['source'])}</code>, "
             f"other: <code>{_esc(report['other']['source'])}</code></p>",
             f'<p class="note">rel = |a - b| / (|golden| + rms(golden row)), the maximum over one '
             f'hidden vector (or logits row) per position; a position fails when rel &gt; '
             f'<span id="rtol" data-value="{rtol!r}">{_g(rtol)}</span>. Hover a cell for its numbers.</p>',
             legend(rtol), _summary(report)]
    for p in report["prompts"]:
        text = f": <code>{_esc(p['text'][:120])}</code>" if p.get("text") else ""
        status = '<span class="pass">ok</span>' if p["ok"] else '<span class="fail">beyond tolerance</span>'
        parts.append(f'<h2 id="prompt-{p["prompt"]}">prompt {p["prompt"]} ({p["tokens"]} tokens){text} '
                     f'&mdash; {status}</h2>')
        hidden = heatmap(p["hidden_states"], rtol, p["first_divergence"], p["prompt"])
        parts.append(f'<div class="heat">{hidden}</div>')
        f = p["first_divergence"]
        if f:
            parts.append(f'<p class="first" data-name="{_esc(f["name"])}" data-pos="{f["position"]}">'
                         f'First divergence: <b>{_esc(f["name"])}</b> at position {f["position"]} '
                         f'(abs {_g(f["abs"])}, rel {_g(f["rel"])}).</p>')
        parts.append(_agreement(p))
        parts.append(_table(p["hidden_states"], "hidden"))
        if p["trace"]:
            t = p["first_trace_divergence"]
            parts.append(f"<h3>Every traced intermediate ({len(p['trace'])})</h3><p>" + (
                "All within tolerance." if t is None else
                f'First beyond tolerance: <b class="first-trace" data-name="{_esc(t["name"])}">'
                f'{_esc(t["name"])}</b> at position {t["position"]} (rel {_g(t["rel"])}).') + "</p>")
            parts.append(f'<details open><summary>heatmap and table of the {len(p["trace"])} '
                         f'intermediates</summary><div class="heat">'
                         f'{heatmap(p["trace"], rtol, t, p["prompt"], "trace", 10)}</div>'
                         f'{_table(p["trace"], "trace")}</details>')
    parts.append("<h2>Provenance</h2>")
    parts.append(_provenance("golden", report["golden"]) + _provenance("other", report["other"]))
    data = json.dumps(report).replace("</", "<\\/")
    parts.append(f'<script type="application/json" id="gemma-ref-report">{data}</script></body></html>')
    return "\n".join(parts)


def write(report: dict, path, title: str = "gemma-ref compare") -> None:
    from .errors import GemmaRefError

    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(report, title))
    except OSError as e:
        raise GemmaRefError(f"{path}: cannot write ({e.strerror})") from None
