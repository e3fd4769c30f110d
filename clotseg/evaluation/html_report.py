"""A self-contained HTML test report: one `report.html` that opens without a network.

`write_html_report(out_dir, summary, rows, images)` writes `<out_dir>/report.html`:

  * the summary (report.build_summary's dict, as in summary.json): cohort
    counts, per-metric mean / median / std / 95% bootstrap CI over all
    labelled cases and over clot cases, lesion/case detection with Wilson
    CIs, scoring conventions, warnings and the run's meta;
  * biomarker agreement (agreement.agreement_table) and the uncertainty
    ranking (uncertainty.uncertainty_ranking), when given or present in the
    summary under "biomarker_agreement" / "uncertainty_ranking";
  * a per-case table (Dice, detection, biomarkers, uncertainty, ...):
    click a header to sort (again to reverse); `report.html#sort=dice` or
    `#sort=-dice` opens it sorted; each case id links to its overlay;
  * every figure given in `images`: "overlays" = {case_id: PNG} (one per
    case), any other key = a titled figure (a PNG path or a list of them),
    e.g. {"Training curves": ..., "Bland-Altman: clot volume": ...};
  * with `files`, links to the other outputs beside the report (metrics.csv,
    summary.json, each case's prediction, uncertainty map, NIfTI, DICOM-SEG):
    relative links that work wherever the folder is copied; following them
    is navigation, not a load, so the page itself still fetches nothing.

PNGs are embedded as base64 data URIs, CSS and JavaScript are inline
(vanilla, no library): the file can be mailed or archived alone and makes no
network request. All text is HTML-escaped.

`find_chromium()` / `render_with_chromium()` drive a headless Chromium (the
Debian `chromium` package) to dump the rendered DOM, collect console errors
and take screenshots, for tests and for the README picture.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

from clotseg.evaluation.biomarkers import unit_of
from clotseg.io import atomic_write_text

REPORT_NAME = "report.html"
_BASE_COLUMNS = ["case_id", "case_type", "dice", "iou", "precision", "recall", "hd95", "assd",
                 "n_true_lesions", "n_detected", "n_missed", "n_false_positive_components",
                 "true_volume", "pred_volume", "volume_unit", "distance_unit"]
_UNCERTAINTY_COLUMNS = ["uncertainty_score", "member_disagreement"]
_BIOMARKER_ORDER = ["volume_mm3", "volume_vox", "length_mm", "length_vox", "area_max_mm2", "area_max_px",
                    "n_components", "ncct_mean_hu", "ncct_median_hu", "cta_mean_hu", "cta_median_hu",
                    "perviousness_hu", "pervious", "slice_min", "slice_max"]
_LABELS = {"case_id": "Case", "case_type": "Type", "dice": "Dice", "iou": "IoU", "precision": "Precision",
           "recall": "Recall", "hd95": "HD95", "assd": "ASSD", "hd": "HD", "n_true_lesions": "True lesions",
           "n_detected": "Detected", "n_missed": "Missed", "n_false_positive_components": "FP components",
           "true_volume": "True volume", "pred_volume": "Pred. volume", "volume_unit": "Volume unit",
           "distance_unit": "Distance unit", "uncertainty_score": "Uncertainty",
           "member_disagreement": "Member disagreement", "abs_volume_diff": "Abs. volume diff.",
           "signed_volume_diff": "Signed volume diff."}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2733;
background:#f6f7f9;line-height:1.4}
header{background:#1f3b57;color:#fff;padding:14px 24px}header h1{margin:0;font-size:1.4em}
header p{margin:4px 0 0;opacity:.85;font-size:.9em}
main{padding:8px 24px 40px;max-width:1500px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:10px 16px;margin:14px 0}
h2{font-size:1.15em;margin:6px 0 10px}h3{font-size:1em;margin:12px 0 6px}
table{border-collapse:collapse;font-size:.85em;margin:4px 0 8px}
th,td{border:1px solid #dde2e8;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#eef1f5;position:sticky;top:0}td.t,th.t{text-align:left}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:hover{background:#dfe6ee}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
tbody tr:nth-child(even){background:#fafbfc}tbody tr:hover{background:#eef6ff}
.scroll{overflow-x:auto;max-height:80vh;overflow-y:auto}
.figs{display:flex;flex-wrap:wrap;gap:14px}figure{margin:0;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #dde2e8;background:#fff}
figcaption{font-size:.85em;color:#4a5866;margin-top:2px}
.note{color:#6a7783;font-size:.85em}.warn{color:#9a4b00}
.kv{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:.9em}
.kv dt{color:#4a5866}.kv dd{margin:0}
td.na{color:#9aa5b1}td.bad{background:#fde8e8}td.good{background:#e7f6ea}
"""

_JS = r"""
(function () {
  "use strict";
  function sortKey(cell) {
    var v = cell.getAttribute("data-sort");
    if (v === null || v === "") { return null; }
    var num = Number(v);
    return isNaN(num) ? v.toLowerCase() : num;
  }
  function sortTable(table, col, descending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row, i) { return [row, i]; });
    rows.sort(function (a, b) {
      var x = sortKey(a[0].cells[col]), y = sortKey(b[0].cells[col]);
      if (x === null && y === null) { return a[1] - b[1]; }
      if (x === null) { return 1; }            // missing values last, either direction
      if (y === null) { return -1; }
      var c;
      if (typeof x === typeof y) { c = x < y ? -1 : (x > y ? 1 : 0); }
      else { c = typeof x === "number" ? -1 : 1; }
      if (descending) { c = -c; }
      return c !== 0 ? c : a[1] - b[1];
    });
    rows.forEach(function (r) { body.appendChild(r[0]); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      if (i === col) { th.setAttribute("aria-sort", descending ? "descending" : "ascending"); }
      else { th.removeAttribute("aria-sort"); }
    });
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.title = "click to sort";
      th.addEventListener("click", function () {
        sortTable(table, col, th.getAttribute("aria-sort") === "ascending");
      });
    });
  });
  var m = /^#sort=(-?)([\w.\-]+)$/.exec(window.location.hash || "");
  var cases = document.getElementById("cases-table");
  if (m && cases) {
    var cells = cases.tHead.rows[0].cells;
    for (var i = 0; i < cells.length; i++) {
      if (cells[i].getAttribute("data-key") === m[2]) { sortTable(cases, i, m[1] === "-"); }
    }
  }
  document.body.setAttribute("data-report-ready", "1");
})();
"""


_METRIC_ORDER = ["dice", "iou", "precision", "recall", "hd95", "assd", "hd", "true_volume", "pred_volume",
                 "abs_volume_diff", "signed_volume_diff"]


# ------------------------------------------------------------------ format
def _order(name: str, order: list[str]) -> tuple:
    """Sort key: known names in `order` (also "name [unit]" / "name (c1)" variants), then the rest by name."""
    base = re.split(r" [\[(]", str(name))[0]
    return (order.index(base) if base in order else len(order), str(name))


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _is_num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt(value, digits: int = 3) -> str:
    """Display text of a cell: None/NaN -> 'n/a', floats to `digits` significant digits, bools yes/no."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if abs(value) < 1e-12:
            return "0"                      # float noise (a Wilson bound of 5.6e-17)
        if abs(value) < 10 ** -digits:
            return f"{value:.{digits - 1}e}"
        if abs(value) >= 10 ** digits:
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _sort_value(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    return repr(value) if isinstance(value, float) else str(value)


def _label(key: str) -> str:
    if key in _LABELS:
        return _LABELS[key]
    m = re.match(r"^(pred|true)_(.+)$", key)
    base = m.group(2) if m else key
    base = re.sub(r"_(mm3|mm2|mm|hu|vox|px)$", "", base).replace("_", " ")
    text = (("pred. " if m.group(1) == "pred" else "true ") + base) if m else base
    unit = unit_of(key)
    return f"{text} ({unit})" if unit else text


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _anchor(case_id) -> str:
    return "case-" + re.sub(r"[^\w\-]", "_", str(case_id))


# --------------------------------------------------------------- sections
def default_columns(rows: list[dict]) -> list[str]:
    """Columns of the case table: metrics and detection, biomarkers (pred/true pairs), uncertainty."""
    present = {k for r in rows for k, v in r.items() if v is None or isinstance(v, (str, int, float, bool))}
    cols = [c for c in _BASE_COLUMNS if c in present]
    bases = sorted({re.sub(r"^(pred|true)_", "", k) for k in present if re.match(r"^(pred|true)_", k)},
                   key=lambda b: (_BIOMARKER_ORDER.index(b) if b in _BIOMARKER_ORDER else len(_BIOMARKER_ORDER), b))
    for base in bases:
        if base in ("volume", "voxels"):         # pred_volume/true_volume are metrics columns, already in
            continue
        if base.startswith(("centroid_", "area_max_slice")):
            continue
        for side in ("pred_", "true_"):
            if side + base in present and side + base not in cols:
                cols.append(side + base)
    cols += [c for c in _UNCERTAINTY_COLUMNS if c in present]
    return cols


def _summary_metrics_table(block: dict, title: str) -> str:
    if not block:
        return ""
    out = [f"<h3>{_esc(title)}</h3>", '<table class="metrics"><thead><tr><th class="t">Metric</th><th>n</th>'
           "<th>Mean</th><th>95% CI</th><th>Median</th><th>SD</th><th class=\"t\">Unit</th></tr></thead><tbody>"]
    for name, s in sorted(block.items(), key=lambda kv: _order(kv[0], _METRIC_ORDER)):
        if not isinstance(s, dict):
            continue
        ci = f"[{fmt(s.get('ci_low'))}, {fmt(s.get('ci_high'))}]" if s.get("ci_low") is not None else "n/a"
        out.append(f"<tr><td class=\"t\">{_esc(_LABELS.get(name, name))}</td><td>{_esc(fmt(s.get('n')))}</td>"
                   f"<td>{_esc(fmt(s.get('mean')))}</td><td>{_esc(ci)}</td><td>{_esc(fmt(s.get('median')))}</td>"
                   f"<td>{_esc(fmt(s.get('std')))}</td><td class=\"t\">{_esc(s.get('unit') or '')}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _detection(det: dict, target_name: str = "clot") -> str:
    if not det:
        return ""

    def rate(key, ci_key, num, den):
        ci = det.get(ci_key)
        ci_text = f" [{fmt(ci[0])}, {fmt(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
        return f"{fmt(det.get(key))}{ci_text} ({fmt(det.get(num))}/{fmt(det.get(den))})"

    items = [("Lesion sensitivity", f"{fmt(det.get('lesion_sensitivity'))} "
              f"({fmt(det.get('n_detected_lesions'))}/{fmt(det.get('n_true_lesions'))})"),
             ("Case sensitivity [95% Wilson CI]", rate("case_sensitivity", "case_sensitivity_ci",
                                                        "n_clot_cases_detected", "n_clot_cases")),
             (f"Specificity on {target_name}-free cases [95% Wilson CI]", rate("specificity", "specificity_ci",
                                                                     "n_clot_free_cases_clean", "n_clot_free_cases")),
             ("False-positive components per case", fmt(det.get("fp_components_per_case")))]
    body = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in items)
    return f"<h3>Detection</h3><dl class=\"kv\">{body}</dl>"


def _summary_section(summary: dict, target_name: str = "clot") -> str:
    title = target_name[:1].upper() + target_name[1:]
    if not summary:
        return "<section><h2>Summary</h2><p class=\"note\">no summary given</p></section>"
    parts = ["<section id=\"summary\"><h2>Summary</h2>"]
    counts = [("Cases", summary.get("n_cases")), ("Labelled", summary.get("n_labeled")),
              ("Unlabelled", summary.get("n_unlabeled")), (f"{title} cases", summary.get("n_clot_cases"))]
    types = summary.get("case_types") or {}
    counts += [(f"type: {k}", v) for k, v in types.items()]
    parts.append("<dl class=\"kv\">" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(fmt(v))}</dd>"
                                               for k, v in counts if v is not None) + "</dl>")
    boot = summary.get("bootstrap") or {}
    if boot:
        parts.append(f"<p class=\"note\">95% CI: {_esc(boot.get('method', 'bootstrap'))}, "
                     f"{_esc(fmt(boot.get('n_resamples')))} resamples, seed {_esc(fmt(boot.get('seed')))}.</p>")
    classes = summary.get("classes")
    if isinstance(classes, dict):           # multi-class summary: one block per class
        for name, block in classes.items():
            parts.append(f"<h3>Class {_esc(name)}</h3>")
            parts.append(_summary_metrics_table(block.get("metrics") or {}, "All labelled cases"))
            parts.append(_summary_metrics_table(block.get("metrics_clot_cases") or {}, f"{title} cases"))
            parts.append(_detection(block.get("detection") or {}, target_name))
    else:
        parts.append(_summary_metrics_table(summary.get("metrics") or {}, "All labelled cases"))
        parts.append(_summary_metrics_table(summary.get("metrics_clot_cases") or {}, f"{title} cases only"))
        parts.append(_detection(summary.get("detection") or {}, target_name))
    for w in summary.get("warnings") or []:
        parts.append(f"<p class=\"warn\">warning: {_esc(w)}</p>")
    for note in summary.get("notes") or []:
        parts.append(f"<p class=\"note\">note: {_esc(note)}</p>")
    conv = summary.get("conventions") or {}
    if conv:
        parts.append("<details><summary>Scoring conventions</summary><dl class=\"kv\">"
                     + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in conv.items()) + "</dl></details>")
    meta = summary.get("meta") or {}
    if meta:
        parts.append("<details><summary>Run</summary><dl class=\"kv\">"
                     + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(fmt(v) if not isinstance(v, (dict, list)) else v)}</dd>"
                               for k, v in meta.items()) + "</dl></details>")
    parts.append("</section>")
    return "".join(parts)


def _agreement_section(table: dict | None, ranking: dict | None) -> str:
    parts = []
    if table:
        parts.append("<h3>Biomarker agreement, predicted vs true</h3><table class=\"metrics\"><thead><tr>"
                     "<th class=\"t\">Biomarker</th><th>n</th><th>Pearson r</th><th>Spearman rho</th>"
                     "<th>ICC(2,1)</th><th>Bias (pred - true)</th><th>95% limits of agreement</th></tr></thead><tbody>")
        for name, a in sorted(table.items(), key=lambda kv: _order(kv[0], _BIOMARKER_ORDER)):
            loa = (f"[{fmt(a.get('loa_low'))}, {fmt(a.get('loa_high'))}]" if a.get("loa_low") is not None else "n/a")
            parts.append(f"<tr><td class=\"t\">{_esc(_label(name))}</td>"
                         f"<td>{_esc(fmt(a.get('n')))}</td><td>{_esc(fmt(a.get('pearson_r')))}</td>"
                         f"<td>{_esc(fmt(a.get('spearman_rho')))}</td><td>{_esc(fmt(a.get('icc_2_1')))}</td>"
                         f"<td>{_esc(fmt(a.get('mean_diff')))}</td><td>{_esc(loa)}</td></tr>")
        parts.append("</tbody></table><p class=\"note\">Statistics need at least 3 cases with both values; "
                     "n/a where undefined (too few cases, or a constant series).</p>")
    if ranking:
        parts.append("<h3>Uncertainty ranking</h3><p>Spearman rho between the case uncertainty score and Dice: "
                     f"<b>{_esc(fmt(ranking.get('spearman_rho'), 2))}</b> (n = {_esc(fmt(ranking.get('n')))}, "
                     f"p = {_esc(fmt(ranking.get('p_value'), 2))}); strongly negative means the most uncertain "
                     "cases are the worst segmented, the ones to review first.</p>")
    if not parts:
        return ""
    return "<section id=\"agreement\"><h2>Biomarkers and uncertainty</h2>" + "".join(parts) + "</section>"


def _cell_class(key: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "na"
    if key == "case_type":
        return "t " + ("bad" if value in ("missed", "false_alarm") else "good" if value in ("detected", "true_negative")
                       else "")
    return "" if _is_num(value) or isinstance(value, bool) else "t"


def _cases_section(rows: list[dict], columns: list[str], overlays: dict) -> str:
    head = "".join(f"<th data-key=\"{_esc(c)}\" class=\"{'t' if c in ('case_id', 'case_type') else ''}\">"
                   f"{_esc(_label(c))}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            text = _esc(fmt(v))
            if c == "case_id" and str(v) in overlays:
                text = f"<a href=\"#{_anchor(v)}\">{text}</a>"
            cells.append(f"<td class=\"{_cell_class(c, v)}\" data-sort=\"{_esc(_sort_value(v))}\">{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ("<section id=\"cases\"><h2>Cases</h2><p class=\"note\">Click a column header to sort (again to "
            "reverse); missing values (n/a) sort last.</p><div class=\"scroll\"><table id=\"cases-table\" "
            f"class=\"sortable\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div></section>")


def _figure(path, caption: str, anchor: str | None = None) -> str:
    ident = f" id=\"{_esc(anchor)}\"" if anchor else ""
    p = Path(path)
    if not p.is_file():
        return f"<figure{ident}><p class=\"note\">(image missing: {_esc(p.name)})</p>" \
               f"<figcaption>{_esc(caption)}</figcaption></figure>"
    return (f"<figure{ident}><img alt=\"{_esc(caption)}\" src=\"{_data_uri(p)}\">"
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _figures_section(images: dict) -> str:
    parts = []
    for title, value in images.items():
        if title == "overlays" or value is None:
            continue
        paths = list(value) if isinstance(value, (list, tuple)) else [value]
        parts.append(f"<h3>{_esc(title)}</h3><div class=\"figs\">"
                     + "".join(_figure(p, Path(p).stem if len(paths) > 1 else str(title)) for p in paths) + "</div>")
    if not parts:
        return ""
    return "<section id=\"figures\"><h2>Figures</h2>" + "".join(parts) + "</section>"


def _overlays_section(rows: list[dict], overlays: dict, target_name: str = "clot") -> str:
    if not overlays:
        return ""
    order = [str(r.get("case_id")) for r in rows if str(r.get("case_id")) in overlays]
    order += [c for c in overlays if c not in order]
    figs = "".join(_figure(overlays[c], c, _anchor(c)) for c in order)
    return (f"<section id=\"overlays\"><h2>Case overlays</h2><p class=\"note\">Slice with the most "
            f"{_esc(target_name)}; truth green, prediction red.</p><div class=\"figs\">{figs}</div></section>")


def _href(rel) -> str:
    return _esc(quote(Path(rel).as_posix()))


def _files_section(files: dict | None) -> str:
    """Links to the outputs: files = {"outputs": [(label, relative path)], "cases": {case_id: [(label, path)]}}."""
    if not files:
        return ""
    parts = ["<section id=\"files\"><h2>Files</h2><p class=\"note\">Relative links to the files beside this "
             "report.</p>"]
    outputs = files.get("outputs") or []
    if outputs:
        parts.append("<ul class=\"files\">" + "".join(f"<li><a href=\"{_href(rel)}\">{_esc(label)}</a></li>"
                                                       for label, rel in outputs) + "</ul>")
    cases = files.get("cases") or {}
    if cases:
        labels = []
        for items in cases.values():
            for label, _ in items:
                if label not in labels:
                    labels.append(label)
        head = "".join(f"<th class=\"t\">{_esc(lab)}</th>" for lab in labels)
        body = []
        for cid, items in cases.items():
            links = dict(items)
            cells = "".join(f"<td class=\"t\"><a href=\"{_href(links[lab])}\">{_esc(Path(links[lab]).name)}</a></td>"
                            if lab in links else "<td class=\"na\">n/a</td>" for lab in labels)
            body.append(f"<tr><td class=\"t\">{_esc(cid)}</td>{cells}</tr>")
        parts.append(f"<div class=\"scroll\"><table><thead><tr><th class=\"t\">Case</th>{head}</tr></thead>"
                     f"<tbody>{''.join(body)}</tbody></table></div>")
    parts.append("</section>")
    return "".join(parts)


# ------------------------------------------------------------------ public
def build_html(summary: dict, rows: list[dict], images: dict | None = None, title: str = "ClotSeg test report",
               columns: list[str] | None = None, agreement: dict | None = None,
               uncertainty_ranking: dict | None = None, files: dict | None = None,
               target_name: str = "clot") -> str:
    """The report page as a string (see the module docstring)."""
    images = dict(images or {})
    summary = dict(summary or {})
    overlays = {str(k): v for k, v in (images.get("overlays") or {}).items()}
    cols = list(columns) if columns is not None else default_columns(rows)
    if "case_id" not in cols:
        cols.insert(0, "case_id")
    agreement = agreement if agreement is not None else summary.get("biomarker_agreement")
    ranking = uncertainty_ranking if uncertainty_ranking is not None else summary.get("uncertainty_ranking")
    meta = summary.get("meta") or {}
    mods = meta.get("modalities")
    subtitle = " · ".join([_esc(f"{k} {meta[k]}") for k in ("run", "model") if meta.get(k)]
                          + ([_esc(f"modalities {', '.join(map(str, mods))}")] if mods else [])
                          + [f"{len(rows)} case(s)"])
    return "".join([
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        # no network: only inline styles/scripts and data: images may load
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{_esc(title)}</h1><p>{subtitle}</p></header><main>",
        _summary_section(summary, target_name),
        _agreement_section(agreement, ranking),
        _cases_section(rows, cols, overlays),
        _figures_section(images),
        _overlays_section(rows, overlays, target_name),
        _files_section(files),
        f"</main><script>{_JS}</script></body></html>\n",
    ])


def write_html_report(out_dir, summary: dict, rows: list[dict], images: dict | None = None,
                      title: str = "ClotSeg test report", columns: list[str] | None = None,
                      agreement: dict | None = None, uncertainty_ranking: dict | None = None,
                      files: dict | None = None, target_name: str = "clot") -> Path:
    """Write `<out_dir>/report.html` (atomically) and return its path.

    Args:
        out_dir: the Testing folder.
        summary: report.build_summary's dict (summary.json).
        rows: one dict per case (metrics.csv rows plus biomarker and
            uncertainty columns); case_id required.
        images: {"overlays": {case_id: png}, "<figure title>": png or [pngs], ...}.
        columns: case-table columns (default: `default_columns(rows)`).
        agreement: agreement.agreement_table(...) output; uncertainty_ranking:
            uncertainty.uncertainty_ranking(...) output (both default to the
            summary's "biomarker_agreement" / "uncertainty_ranking").
        files: links to the outputs beside the report (see `_files_section`).
        target_name: what is segmented ("clot"), for the page's wording.
    """
    out = Path(out_dir) / REPORT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, build_html(summary, rows, images, title, columns, agreement, uncertainty_ranking,
                                      files, target_name))
    return out


# ---------------------------------------------------------------- browser
def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary ($CHROMIUM_BIN, else chromium, chromium-browser, ...) or None."""
    env = os.environ.get("CHROMIUM_BIN")
    if env and Path(env).is_file():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome",
                 "headless_shell"):
        found = shutil.which(name)
        if found:
            return found
    return None


def render_with_chromium(html_path, screenshot=None, window_size=(1280, 1600), url_suffix: str = "",
                         binary: str | None = None, timeout: float = 90.0) -> tuple[str, list[str]]:
    """Open a page in headless Chromium: (rendered DOM, console error lines).

    With `screenshot` (a PNG path) it also takes a screenshot of the page.
    Console messages come from Chromium's own log (--enable-logging=stderr
    --v=0), which prints every console message, uncaught exception and
    refused load as an "INFO:CONSOLE" line without its level; the report
    page itself never logs, so every such line (and any "Failed to load
    resource" line) is returned as an error. `url_suffix`
    (e.g. "#sort=dice") is appended to the file URL. Raises RuntimeError
    when no binary is found or Chromium fails.
    """
    binary = binary or find_chromium()
    if binary is None:
        raise RuntimeError("no Chromium binary found (apt-get install chromium, or set CHROMIUM_BIN)")
    url = Path(html_path).resolve().as_uri() + url_suffix
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="clotseg-chromium-") as profile:
        base = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                "--hide-scrollbars", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                f"--window-size={window_size[0]},{window_size[1]}", "--virtual-time-budget=3000"]
        runs = [base + ["--dump-dom", url]]
        if screenshot is not None:
            runs.append(base + [f"--screenshot={Path(screenshot).resolve()}", url])
        dom = ""
        for i, cmd in enumerate(runs):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
            if i == 0:
                dom = done.stdout
            for line in done.stderr.splitlines():
                if ":CONSOLE" in line or "failed to load resource" in line.lower():
                    errors.append(line.strip())
    if screenshot is not None and not Path(screenshot).is_file():
        raise RuntimeError(f"chromium wrote no screenshot at {screenshot}")
    return dom, errors
