"""The HTML page of the report (``report.build_report`` gathers the content, this lays it out).

Plain HTML and CSS, no template engine: every value is escaped with ``html.escape``. The page carries its
data twice: for people (tables, images, the plotly figure) and for programs, as JSON in
``<script type="application/json" id="organseg-report">`` (organs, values, flags, warnings), which the tests
and any later tooling read without parsing the table.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from organseg import io

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f5f6f8;color:#222}
header{background:#101218;color:#eee;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#aaa;font-size:13px}main{padding:16px 24px;max-width:1200px}
section{background:#fff;border-radius:6px;padding:12px 16px;margin:0 0 16px;box-shadow:0 1px 2px #0002}
h2{font-size:16px;margin:4px 0 10px}table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border-bottom:1px solid #e3e3e3;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#fafafa}.num{text-align:right;font-variant-numeric:tabular-nums}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.flag{color:#b00020;font-weight:600}.note{color:#7a5a00}.ok{color:#1b7a2f}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 10px;margin:4px 0;font-size:13px}
.slices{display:flex;flex-wrap:wrap;gap:10px}.slices figure{margin:0;text-align:center;font-size:12px}
.slices img{display:block;image-rendering:auto;border:1px solid #ccc;max-width:288px}
small{color:#666}
"""


def _esc(value: object) -> str:
    return html.escape(str(value))


def _swatch(rgb: Sequence[int]) -> str:
    r, g, b = (int(c) for c in rgb)
    return f'<span class="sw" style="background:rgb({r},{g},{b})"></span>'


def _range(bounds: Sequence[float] | None, unit: str) -> str:
    return "" if bounds is None else f"{bounds[0]:g}–{bounds[1]:g} {unit}"


def _flag(flag: str) -> str:
    if flag == "partial":
        return ' <span class="note">partial (cut off by the scan)</span>'
    return f' <span class="flag">{_esc(flag)}</span>' if flag else ""


def _confidence_cell(conf: Mapping | None) -> str:
    if not conf:
        return "<small>—</small>"
    if conf.get("score") is None:
        return "<small>not found</small>"
    cls = "flag" if conf.get("low") else "ok"
    why = "; ".join(conf.get("reasons") or [])
    return f'<span class="{cls}">{conf["score"]:.2f}</span>' + (
        f"<br><small>{_esc(why)}</small>" if why else ""
    )


def _table(rows: Sequence[Mapping], colors: Mapping) -> str:
    head = (
        "<tr><th>organ</th><th class=num>volume</th><th>adult reference</th><th class=num>mean ± sd HU</th>"
        "<th>typical HU</th><th>bounding box (RAS+ mm)</th><th>confidence</th></tr>"
    )
    body = []
    for r in rows:
        lo, hi = r["bbox_mm"]["min"], r["bbox_mm"]["max"]
        size = " × ".join(f"{b - a:.0f}" for a, b in zip(lo, hi, strict=True))
        box = f"{size} mm<br><small>x {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f}, z {lo[2]:.0f}..{hi[2]:.0f}</small>"
        body.append(
            f'<tr data-organ="{_esc(r["organ"])}"><td>{_swatch(colors.get(r["organ"], (160, 160, 160)))}'
            f"{_esc(r['organ'])}</td>"
            f"<td class=num>{r['volume_ml']:.1f} ml{_flag(r['volume_flag'])}</td>"
            f"<td>{_range(r['reference_ml'], 'ml')}</td>"
            f"<td class=num>{r['hu_mean']:.0f} ± {r['hu_sd']:.0f}{_flag(r['hu_flag'])}</td>"
            f"<td>{_range(r['reference_hu'], 'HU')}</td><td>{box}</td>"
            f"<td>{_confidence_cell(r.get('confidence'))}</td></tr>"
        )
    return f"<table id=organ-table>{head}{''.join(body)}</table>"


def _run_section(run: Mapping | None) -> str:
    if not run:
        return "<p><small>No run manifest (<code>&lt;mask&gt;.run.json</code>) found beside the mask.</small></p>"
    timings = run.get("timings_s") or {}
    items = [
        ("model", ", ".join(map(str, run.get("models") or [])) or "—"),
        ("device", f"{run.get('device', '—')} ({run.get('threads', '?')} threads)"),
        ("input", run.get("input", "—")),
        ("input grid", json.dumps({k: v for k, v in (run.get("input_grid") or {}).items() if k != "affine"})),
        ("settings", json.dumps(run.get("settings") or {})),
        (
            "timings",
            ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
            + f" (total {sum(timings.values()):.1f} s)",
        ),
        ("versions", ", ".join(f"{k} {v}" for k, v in (run.get("versions") or {}).items())),
    ]
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in items)
    return f"<table>{rows}</table>"


def render_page(
    *,
    title: str,
    mask: str,
    ct: str,
    rows: Sequence[Mapping],
    colors: Mapping,
    figure,
    slices: Mapping[str, Mapping[str, str]],
    run: Mapping | None,
    notes: Sequence[str],
    seconds: float,
) -> str:
    """The whole report page as one string (plotly.js inlined: opens offline)."""
    import plotly.io as pio

    plot = pio.to_html(
        figure,
        full_html=False,
        include_plotlyjs=True,
        div_id="organs-3d",
        config={"displaylogo": False, "responsive": True},
    )
    run_warnings = list((run or {}).get("warnings") or [])
    all_notes = run_warnings + [n for n in notes if n not in run_warnings]
    warn_html = (
        "".join(f'<div class="warn">{_esc(n)}</div>' for n in all_notes) or "<p><small>none</small></p>"
    )
    slice_html = []
    for r in rows:
        figs = "".join(
            f'<figure><img alt="{_esc(r["organ"])} {plane}" src="{uri}"><figcaption>{plane}</figcaption></figure>'
            for plane, uri in slices[r["organ"]].items()
        )
        slice_html.append(f"<h3>{_swatch(colors.get(r['organ'], (160, 160, 160)))}{_esc(r['organ'])}</h3>"
                          f'<div class="slices">{figs}</div>')  # fmt: skip
    data = {
        "organs": [r["organ"] for r in rows],
        "rows": rows,
        "warnings": all_notes,
        "mask": mask,
        "ct": ct,
        "organseg_version": io.organseg_version(),
    }
    payload = json.dumps(io.json_safe(data)).replace("</", "<\\/")
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)} — organseg report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body><header><h1>{_esc(title)}</h1>
<p>mask {_esc(mask)} · CT {_esc(ct)} · organseg {_esc(io.organseg_version())} · {created} · built in {seconds:.1f} s</p>
</header><main>
<section><h2>Warnings</h2>{warn_html}</section>
<section><h2>Organs</h2>{_table(rows, colors)}
<p><small>Volume references: adult CT volumetry (liver, spleen: Kim et al., Radiology 2021; kidneys: around
Geraghty et al., Abdom Imaging 2004). HU ranges span unenhanced to portal-venous scans; a flag is a reason to
look, not a diagnosis. Confidence (from inference): expected Dice × volume and side plausibility; lowest
first.</small></p></section>
<section id="view3d">{plot}</section>
<section><h2>Slices (window −175..250 HU; radiological view: patient's right on the left)</h2>{"".join(slice_html)}</section>
<section><h2>Run</h2>{_run_section(run)}</section>
</main>
<script type="application/json" id="organseg-report">{payload}</script>
</body></html>
"""
