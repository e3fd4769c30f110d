"""Evaluation report: per-case CSV, summary JSON and a Markdown table.

`write_report(rows, out_dir)` takes one `case_metrics` dict per case (plus a
"case_id" key, and any extra columns the caller adds, e.g. "split") and writes

  * metrics.csv   one row per case, case_id first, fixed column order;
  * summary.json  per-metric mean/median/std/bootstrap CI over all labeled
                  cases and over clot cases only, detection rates, case-type
                  counts, units, scoring conventions, the caller's meta and
                  any extra entries (biomarker agreement, uncertainty ranking).

`read_metrics_csv(path)` reads metrics.csv back with typed values.

Both files are written atomically. NaN is written as JSON null and as an
empty CSV cell. Unit-bearing metrics (distances, volumes) are never averaged
across units: if cases mix mm and voxel units, each unit gets its own entry
"<metric> [<unit>]" and a warning is recorded. Rows of a multi-class model,
whose metrics carry a "_c<k>" suffix per class (dice_c1, ...), are summarised
class by class (summary["classes"]["c1"], ...).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from pathlib import Path

from clotseg.evaluation.stats import detection_summary, summarize
from clotseg.helpers import jsonable as _jsonable
from clotseg.io import atomic_write_json, atomic_write_text

CSV_NAME = "metrics.csv"
_CLASS_SUFFIX = re.compile(r"^(?P<base>.+)_c(?P<cls>\d+)$")
SUMMARY_NAME = "summary.json"

COLUMNS = [
    "case_id", "case_type", "dice", "iou", "precision", "recall",
    "hd95", "assd", "hd", "distance_unit", "distance_is_failure_value",
    "true_volume", "pred_volume", "volume_unit", "abs_volume_diff", "signed_volume_diff",
    "n_true_lesions", "n_detected", "n_missed", "n_pred_components", "n_false_positive_components",
    "true_voxels", "pred_voxels",
]
OVERLAP_METRICS = ["dice", "iou", "precision", "recall"]
DISTANCE_METRICS = ["hd95", "assd", "hd"]
VOLUME_METRICS = ["true_volume", "pred_volume", "abs_volume_diff", "signed_volume_diff"]
LABELS = {
    "dice": "Dice", "iou": "IoU", "precision": "Precision", "recall": "Recall",
    "hd95": "HD95", "assd": "ASSD", "hd": "HD (max)",
    "true_volume": "True volume", "pred_volume": "Predicted volume",
    "abs_volume_diff": "Abs. volume diff.", "signed_volume_diff": "Signed volume diff. (pred - true)",
}
CONVENTIONS = {
    "true_negative": "no clot, no prediction: Dice/IoU/precision/recall 1, distances 0",
    "missed": "clot, no overlapping prediction: Dice/IoU/recall 0; with an empty prediction "
              "precision 0 and distances = image diagonal (failure value)",
    "false_alarm": "no clot, some prediction: Dice/IoU/precision/recall 0, distances = image diagonal",
    "detected": "clot and overlapping prediction: ordinary metrics",
    "surface": "surface = mask XOR 6-neighbour erosion; HD95 = 95th percentile of both directed "
               "surface distance sets (MedPy hd95); ASSD = mean of the two directed means",
    "lesions": "3D connected components, 26-connectivity; a true lesion is detected if it "
               "overlaps any predicted voxel; a predicted component touching no true voxel is a "
               "false positive",
    "slice_gaps": "cases whose slices are not adjacent in the source (gaps in the slice numbers, sidecar "
                  "slice_gaps) are scored per run of adjacent slices: components and surface distances never "
                  "join slices across a gap; a run with only one of the masks gives its surface the failure "
                  "distance",
    "ci": "percentile bootstrap of the mean over cases",
}


def _columns(rows: list[dict]) -> list[str]:
    """case_id, the known columns in COLUMNS order, then per-class columns
    ("<metric>_c<k>", class by class, each in COLUMNS order), then the rest
    alphabetically."""
    present = {k for r in rows for k in r}

    def rank(col: str):
        if col in COLUMNS:
            return (0, 0, COLUMNS.index(col), "")
        m = _CLASS_SUFFIX.match(col)
        if m and m["base"] in COLUMNS:
            return (1, int(m["cls"]), COLUMNS.index(m["base"]), "")
        return (2, 0, 0, col)

    return ["case_id"] + sorted(present - {"case_id"}, key=rank)


def split_by_class(rows: list[dict]) -> dict[str, list[dict]] | None:
    """Per-class rows from multi-class rows, or None for ordinary rows.

    Multi-class callers score each class k separately and store its metrics
    with the suffix "_c<k>" (dice_c1, case_type_c1, ...). Returns
    {"c1": [rows with the suffix removed], ...}; columns without a class
    suffix (case_id, extras) are copied into every class row.
    """
    if any("case_type" in r for r in rows):
        return None
    classes = sorted({int(m["cls"]) for r in rows for k in r
                      if (m := _CLASS_SUFFIX.match(k)) and m["base"] == "case_type"})
    if not classes:
        return None
    out = {}
    for c in classes:
        suffix = f"_c{c}"
        class_rows = []
        for r in rows:
            shared = {k: v for k, v in r.items() if not _CLASS_SUFFIX.match(k)}
            own = {k[: -len(suffix)]: v for k, v in r.items() if k.endswith(suffix)}
            class_rows.append({**shared, **own})
        out[f"c{c}"] = class_rows
    return out


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def metrics_csv(rows: list[dict]) -> str:
    """CSV text of the rows: header + one line per case, case_id first."""
    cols = _columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for r in rows:
        writer.writerow([_cell(r.get(c)) for c in cols])
    return buf.getvalue()


def _metric_block(rows: list[dict], n_resamples: int, seed: int, warnings: list[str], scope: str) -> dict:
    block = {}
    for name in OVERLAP_METRICS:
        block[name] = {**summarize([r.get(name) for r in rows], n_resamples, seed), "unit": ""}
    for names, unit_key in ((DISTANCE_METRICS, "distance_unit"), (VOLUME_METRICS, "volume_unit")):
        units = sorted({r.get(unit_key) for r in rows if r.get(unit_key) is not None})
        if len(units) > 1:
            warnings.append(f"{scope}: cases mix {unit_key} values {units}; summarised per unit")
        for name in names:
            for unit in units:
                key = name if len(units) == 1 else f"{name} [{unit}]"
                vals = [r.get(name) for r in rows if r.get(unit_key) == unit]
                block[key] = {**summarize(vals, n_resamples, seed), "unit": unit}
    return block


def build_summary(rows: list[dict], n_resamples: int = 5000, seed: int = 0, meta: dict | None = None) -> dict:
    """The summary dict that `write_report` saves (NaN kept as float NaN).

    Multi-class rows (see `split_by_class`) give {"n_cases", "classes": {"c1":
    <single-class summary>, ...}, "bootstrap", "conventions", "meta"}.
    """
    per_class = split_by_class(rows)
    if per_class is not None:
        classes = {name: build_summary(r, n_resamples, seed) for name, r in per_class.items()}
        first = next(iter(classes.values()))
        return {"n_cases": len(rows), "classes": classes, "bootstrap": first["bootstrap"],
                "conventions": CONVENTIONS, "meta": dict(meta or {}),
                "warnings": [f"{name}: {w}" for name, c in classes.items() for w in c["warnings"]]}
    labeled = [r for r in rows if r.get("case_type", "unlabeled") != "unlabeled"]
    clot = [r for r in labeled if (r.get("true_voxels") or 0) > 0 or (r.get("n_true_lesions") or 0) > 0]
    warnings: list[str] = []
    units = {}
    for kind, key in (("distance", "distance_unit"), ("volume", "volume_unit")):
        found = {r.get(key) for r in rows if r.get(key) is not None}
        units[kind] = found.pop() if len(found) == 1 else ("mixed" if found else None)
    summary = {
        "n_cases": len(rows),
        "n_labeled": len(labeled),
        "n_unlabeled": len(rows) - len(labeled),
        "n_clot_cases": len(clot),
        "case_types": dict(sorted(Counter(r.get("case_type", "unlabeled") for r in rows).items())),
        "units": units,
        "metrics": _metric_block(labeled, n_resamples, seed, warnings, "all labeled cases"),
        "metrics_clot_cases": _metric_block(clot, n_resamples, seed, warnings, "clot cases"),
        "n_distance_failure_values": sum(1 for r in labeled if r.get("distance_is_failure_value")),
        "detection": detection_summary(labeled),
        "bootstrap": {"n_resamples": int(n_resamples), "seed": int(seed), "ci": 0.95,
                      "method": "percentile bootstrap of the mean over cases"},
        "conventions": CONVENTIONS,
        "meta": dict(meta or {}),
        "warnings": warnings,
    }
    unlabeled = [r for r in rows if r.get("case_type") == "unlabeled"]
    if unlabeled:
        summary["unlabeled_pred_volume"] = {
            **summarize([r.get("pred_volume") for r in unlabeled], n_resamples, seed),
            "unit": units["volume"] or "",
        }
    return summary


def write_report(rows: list[dict], out_dir, n_resamples: int = 5000, seed: int = 0,
                 meta: dict | None = None, extra: dict | None = None) -> dict:
    """Write metrics.csv and summary.json into out_dir; return the summary.

    Args:
        rows: one dict per case: "case_id" plus `case_metrics` output and any
            extra scalar columns.
        out_dir: folder (created if missing).
        n_resamples, seed: bootstrap settings (deterministic for a seed).
        meta: JSON-able run information (run name, threshold, backend, ...).
        extra: further top-level summary entries (e.g. "biomarker_agreement",
            "uncertainty_ranking"), JSON-able.
    Returns:
        the summary as written (NaN replaced by None).
    Raises:
        ValueError: a row lacks case_id or a case_id repeats.
    """
    ids = [r.get("case_id") for r in rows]
    if any(i is None or i == "" for i in ids):
        raise ValueError("every metrics row needs a non-empty 'case_id'")
    dupes = sorted({str(i) for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"case ids repeat in the metrics rows: {', '.join(dupes)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = _jsonable({**build_summary(rows, n_resamples, seed, meta), **(extra or {})})
    atomic_write_text(out_dir / CSV_NAME, metrics_csv(rows))
    atomic_write_json(out_dir / SUMMARY_NAME, summary)
    return summary


def parse_cell(text: str):
    """A metrics.csv cell back to a value: '' -> None, True/False -> bool, numbers -> int/float, else str."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_metrics_csv(path) -> list[dict]:
    """The rows of a metrics.csv as written by `write_report`, values typed
    back (see `parse_cell`); case_id stays a string."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: (v if k == "case_id" else parse_cell(v)) for k, v in r.items()} for r in rows]


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _digits(name: str) -> int:
    base = name.split(" [")[0]
    return 3 if base in OVERLAP_METRICS else (2 if base in DISTANCE_METRICS else 1)


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{100 * value:.1f}%"


def markdown_table(summary: dict, scope: str = "metrics", target_name: str | None = None) -> str:
    """Markdown table (metric | mean | median | std | 95% CI | n) plus detection lines.

    Args:
        summary: as returned by `write_report`/`build_summary` or read back
            from summary.json.
        scope: "metrics" (all labeled cases) or "metrics_clot_cases".
        target_name: what is segmented, for the wording (default: the
            summary's meta "target_name", else "clot").
    A multi-class summary gives one table per class, headed "Class <k>".
    """
    target = target_name or str((summary.get("meta") or {}).get("target_name") or "clot")
    if "classes" in summary:
        return "\n".join(f"Class {name[1:]}\n\n" + markdown_table(sub, scope, target)
                         for name, sub in summary["classes"].items())
    lines = ["| metric | mean | median | std | 95% CI | n |", "| --- | --- | --- | --- | --- | --- |"]
    for name, s in summary.get(scope, {}).items():
        base = name.partition(" [")[0]
        unit = s.get("unit") or ""
        label = LABELS.get(base, base) + (f" ({unit})" if unit else "")
        d = _digits(name)
        ci = f"[{_fmt(s.get('ci_low'), d)}, {_fmt(s.get('ci_high'), d)}]"
        lines.append(f"| {label} | {_fmt(s.get('mean'), d)} | {_fmt(s.get('median'), d)} | "
                     f"{_fmt(s.get('std'), d)} | {ci} | {s.get('n', 0)} |")
    det = summary.get("detection") or {}
    types = summary.get("case_types") or {}
    lines.append("")
    lines.append("Case types: " + (", ".join(f"{k} {v}" for k, v in types.items()) or "none"))
    if det:
        lines.append(f"- Lesion sensitivity: {_pct(det.get('lesion_sensitivity'))} "
                     f"({det.get('n_detected_lesions', 0)}/{det.get('n_true_lesions', 0)} lesions)")
        lines.append(f"- Case sensitivity: {_pct(det.get('case_sensitivity'))} "
                     f"({det.get('n_clot_cases_detected', 0)}/{det.get('n_clot_cases', 0)} {target} cases)")
        lines.append(f"- Specificity ({target}-free cases without prediction): {_pct(det.get('specificity'))} "
                     f"({det.get('n_clot_free_cases_clean', 0)}/{det.get('n_clot_free_cases', 0)})")
        lines.append(f"- False-positive components per case: {_fmt(det.get('fp_components_per_case'), 2)}")
    n_fail = summary.get("n_distance_failure_values")
    if n_fail:
        lines.append(f"- {n_fail} case(s) scored the failure distance (image diagonal) for an empty mask")
    return "\n".join(lines) + "\n"
