"""Step 2 of testing: score a folder of predictions against a folder of truth masks.

    score_folder(pred_dir, truth_dir, out_dir, volumes_dir=None, ...)

reads the files, never a model, and writes into `out_dir`

  metrics.csv   one row per case: Dice ... detection (clotseg.evaluation.metrics),
                the biomarkers of the prediction and of the truth (pred_<key>,
                true_<key>; clotseg.evaluation.biomarkers) and, when the
                predictions folder has them, the uncertainty score
                (uncertainty_score, member_disagreement, uncertain_region_voxels)
  summary.json  report.build_summary (mean, median, std, 95% bootstrap CI,
                detection) plus "biomarker_agreement" (Pearson, Spearman,
                ICC(2,1), Bland-Altman per biomarker, predicted vs true),
                "uncertainty_ranking" (Spearman rho of the uncertainty score
                against Dice), "biomarker_units" and "notes"

Without any truth (`truth_dir=None`) it writes `predictions.json` instead:
the predicted biomarkers and uncertainty of every case, no metrics.

File names (matched case-insensitively)
---------------------------------------
Truth: the files in `truth_dir` named like `mask_pattern` (config.py's
MASK_PATTERN, `CS<ID>_seg_corrected_binary.npy`; the case id is the
pattern's prefix + <ID>, e.g. CS12, as everywhere in ClotSeg). When no file
there matches the pattern, every `.npy`, `.nii` or `.nii.gz` file is a truth
mask whose case id is its name without the extension (`case_7.nii.gz` ->
`case_7`, the nnU-Net layout).

Predictions: `<case>_pred.npy` (what testing.py writes; `.nii`/`.nii.gz`
too), or a file with exactly the truth file's name. When a case has both a
`.npy` and a NIfTI prediction (testing.py exports NIfTI for imported cases,
on the source grid), the one in the truth's format is used.
`<case>_prob.*`, `<case>_unc.npy`, `<case>_unc.json`, DICOM and JSON files
are not predictions. A prediction with no truth file is an error; truth
files without a prediction are left out with a note (pass `case_ids` to
require a fixed list).

Values: predictions and truth are integer label masks (0/1, 0/255 or
0..K-1 for a K-class model; bool is fine); float arrays must hold whole
numbers (probabilities are refused: threshold them first).

Voxel spacing, in order: the case's sidecar `<case>.json` ("spacing_mm",
in `volumes_dir`, else in `truth_dir`), the truth NIfTI's header, the
`default_spacing` (config VOXEL_SPACING_MM); otherwise distances and volumes
are in voxels (and labelled so).

Volumes (optional, `volumes_dir` with `modality_patterns`, the ClotSeg
layout): give the attenuation biomarkers (mean/median HU per CT modality,
perviousness with CTA and NCCT) and the overlays of the render step.

Uncertainty: `<case>_unc.json` beside the prediction (written by the
predict step from the flip-TTA members; see clotseg.evaluation.uncertainty)
gives the case score; `<case>_unc.npy` is the voxel map the report draws.

Every problem of every case (missing or unreadable file, shape mismatch,
non-integer labels, bad sidecar) is listed at once as an InputDataError
before anything is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clotseg.cohort import case_id_for, listing, read_sidecar
from clotseg.errors import InputDataError
from clotseg.evaluation.agreement import agreement_table
from clotseg.evaluation.biomarkers import BIOMARKER_UNITS, biomarker_row, modality_key, unit_of
from clotseg.evaluation.metrics import case_metrics
from clotseg.evaluation.report import SUMMARY_NAME, split_by_class, write_report
from clotseg.helpers import jsonable as _jsonable
from clotseg.helpers import natural_key, pattern_regex
from clotseg.evaluation.uncertainty import uncertainty_ranking
from clotseg.intensity import normalise_mask
from clotseg.io import atomic_write_json, load_npy

PRED_SUFFIX = "_pred"
PROB_SUFFIX = "_prob"
UNC_SUFFIX = "_unc"
EXTENSIONS = (".npy", ".nii.gz", ".nii")
DEFAULT_MASK_PATTERN = "CS<ID>_seg_corrected_binary.npy"
PREDICTIONS_JSON = "predictions.json"
GEOMETRY_BIOMARKERS = ("volume_mm3", "volume_vox", "length_mm", "length_vox", "area_max_mm2", "area_max_px",
                       "n_components")
UNCERTAINTY_KEYS = ("uncertainty_score", "member_disagreement", "uncertain_region_voxels", "uncertainty_method")


@dataclass
class CaseFiles:
    """The files of one case for the score and render steps."""

    case_id: str
    pred: Path
    truth: Path | None = None
    volumes: dict = field(default_factory=dict)      # modality -> Path (all modalities, or empty)
    sidecar: Path | None = None
    uncertainty: Path | None = None                  # <case>_unc.json (case score)
    uncertainty_map: Path | None = None              # <case>_unc.npy (voxel map)


# ------------------------------------------------------------------ files
def split_ext(name: str) -> tuple[str, str]:
    """('CS1_pred', '.nii.gz') for 'CS1_pred.nii.gz'; ('x', '') for an unknown extension."""
    low = name.lower()
    for ext in EXTENSIONS:
        if low.endswith(ext):
            return name[: -len(ext)], ext
    return name, ""


def _is_nifti(path: Path) -> bool:
    return split_ext(path.name)[1] in (".nii", ".nii.gz")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())


def _folder(path, what: str) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise InputDataError(f"{what} folder {folder} does not exist")
    if not folder.is_dir():
        raise InputDataError(f"{what} {folder} is a file, not a folder")
    return folder


def load_array(path: Path, what: str) -> tuple[np.ndarray, dict]:
    """(array, info) of a .npy (never unpickled) or NIfTI file; info has the
    NIfTI's "zooms" and "affine" (empty for .npy)."""
    if not _is_nifti(path):
        return load_npy(path, what=what), {}
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:   # nibabel raises several types for bad files
        raise InputDataError(f"{what} file {path} is not a readable NIfTI image: {exc}") from exc
    return data, {"zooms": tuple(float(z) for z in img.header.get_zooms()[:3]),
                  "affine": np.asarray(img.affine, dtype=np.float64)}


def as_labels(arr: np.ndarray, what: str) -> np.ndarray:
    """An integer label mask (uint8; 0/255 -> 0/1) or InputDataError."""
    a = np.asarray(arr)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 3:
        raise InputDataError(f"{what} has shape {a.shape}; expected a 3D mask (H, W, D)")
    if a.dtype.kind not in "biuf":
        raise InputDataError(f"{what} has dtype {a.dtype}; expected integer labels")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise InputDataError(f"{what} holds NaN/inf values")
        if not np.array_equal(a, np.round(a)):
            raise InputDataError(f"{what} holds non-integer values ({float(a.min()):g}..{float(a.max()):g}); "
                                 "expected label masks, not probabilities: threshold them first")
    if a.size and a.dtype.kind != "b" and a.min() < 0:
        raise InputDataError(f"{what} holds negative values; expected labels 0, 1, ...")
    if a.size and a.dtype.kind != "b" and a.max() > 255:
        raise InputDataError(f"{what} holds label values up to {int(a.max())}; expected 0/1, 0/255 or 0..K-1")
    return normalise_mask(a)


def _truth_files(truth_dir: Path, mask_pattern: str) -> dict[str, Path]:
    files = [p for p in _files(truth_dir) if split_ext(p.name)[1]]
    rx = pattern_regex(mask_pattern) if mask_pattern and "<ID>" in mask_pattern else None
    matched = {}
    if rx is not None:
        for p in _files(truth_dir):
            m = rx.match(p.name)
            if m:
                matched.setdefault(case_id_for(mask_pattern, m.group("id")), []).append(p)
    if not matched:
        for p in files:
            matched.setdefault(split_ext(p.name)[0], []).append(p)
    dupes = {cid: ps for cid, ps in matched.items() if len(ps) > 1}
    lower = {}
    for cid, ps in matched.items():
        lower.setdefault(cid.lower(), []).extend(ps)
    dupes.update({cid: ps for cid, ps in lower.items() if len(ps) > 1})
    if dupes:
        cid, ps = next(iter(dupes.items()))
        raise InputDataError(f"case {cid}: {len(ps)} truth files in {truth_dir}: {', '.join(p.name for p in ps)}; "
                             "keep one")
    return {cid: ps[0] for cid, ps in matched.items()}


def _prediction_files(pred_dir: Path, truth: dict[str, Path]) -> tuple[dict[str, list[Path]], list[Path], dict]:
    """({case id: [candidate predictions]}, [predictions with no truth], {case id: {aux: path}})."""
    by_lower = {cid.lower(): cid for cid in truth}
    by_name = {p.name.lower(): cid for cid, p in truth.items()}
    preds: dict[str, list[Path]] = {}
    orphans: list[Path] = []
    aux: dict[str, dict] = {}
    for p in _files(pred_dir):
        stem, ext = split_ext(p.name)
        low = stem.lower()
        if p.name.lower().endswith(UNC_SUFFIX + ".json"):
            cid = by_lower.get(p.name[: -len(UNC_SUFFIX + ".json")].lower())
            if cid:
                aux.setdefault(cid, {})["unc_json"] = p
            continue
        if not ext:
            continue                                   # DICOM-SEG, JSON, PNG, ...
        if low.endswith(UNC_SUFFIX) and ext == ".npy":
            cid = by_lower.get(low[: -len(UNC_SUFFIX)])
            if cid:
                aux.setdefault(cid, {})["unc_map"] = p
            continue
        if low.endswith(PROB_SUFFIX):
            continue
        if p.name.lower() in by_name:
            preds.setdefault(by_name[p.name.lower()], []).append(p)
        elif low.endswith(PRED_SUFFIX):
            cid = by_lower.get(low[: -len(PRED_SUFFIX)])
            if cid is None:
                orphans.append(p)
            else:
                preds.setdefault(cid, []).append(p)
    return preds, orphans, aux


def _choose(candidates: list[Path], truth: Path | None) -> Path:
    """Prefer the prediction in the truth's format, then .npy, .nii.gz, .nii."""
    want = split_ext(truth.name)[1] if truth is not None else ".npy"
    order = [want] + [e for e in EXTENSIONS if e != want]
    return sorted(candidates, key=lambda p: order.index(split_ext(p.name)[1]))[0]


def _volume_files(volumes_dir: Path, modality_patterns: dict) -> dict[str, dict]:
    found: dict[str, dict] = {}
    regexes = {m: pattern_regex(p) for m, p in modality_patterns.items()}
    for p in _files(volumes_dir):
        for m, rx in regexes.items():
            hit = rx.match(p.name)
            if hit:
                found.setdefault(case_id_for(modality_patterns[m], hit.group("id")).lower(), {})[m] = p
    return found


def _sidecars(*folders) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        for p in _files(Path(folder)):
            if p.suffix.lower() == ".json":
                out.setdefault(p.stem.lower(), p)
    return out


def match_cases(pred_dir, truth_dir=None, volumes_dir=None, *, mask_pattern: str = DEFAULT_MASK_PATTERN,
                modality_patterns: dict | None = None, case_ids=None) -> tuple[list[CaseFiles], list[str]]:
    """Pair the predictions with their truth (and volumes, sidecars, uncertainty).

    Args:
        pred_dir: the predictions folder; truth_dir: the truth masks (None:
            unlabelled cases, predictions only); volumes_dir: the volumes in
            the ClotSeg layout (optional) named by `modality_patterns`.
        case_ids: score exactly these cases, in this order (each needs a
            prediction, and a truth file when truth_dir is given).
    Returns ([CaseFiles in case order], [notes]). Raises InputDataError with
    every problem listed.
    """
    pred_dir = _folder(pred_dir, "predictions")
    truth_dir = None if truth_dir is None else _folder(truth_dir, "truth")
    volumes_dir = None if volumes_dir is None else _folder(volumes_dir, "volumes")
    problems, notes = [], []
    if truth_dir is not None:
        truth = _truth_files(truth_dir, mask_pattern)
        if not truth:
            raise InputDataError(f"no truth masks in {truth_dir}: expected files named like {mask_pattern} "
                                 "or <case>.npy / <case>.nii.gz")
        preds, orphans, aux = _prediction_files(pred_dir, truth)
        for p in orphans:
            problems.append(f"prediction {p.name} has no truth file in {truth_dir} (case "
                            f"{split_ext(p.name)[0][: -len(PRED_SUFFIX)]})")
    else:
        truth = {}
        preds, aux = {}, {}
        for p in _files(pred_dir):
            stem, ext = split_ext(p.name)
            if ext and stem.lower().endswith(PRED_SUFFIX):
                preds.setdefault(stem[: -len(PRED_SUFFIX)], []).append(p)
        lower = {cid.lower(): cid for cid in preds}
        for p in _files(pred_dir):
            low = p.name.lower()
            if low.endswith(UNC_SUFFIX + ".json") and low[: -len(UNC_SUFFIX + ".json")] in lower:
                aux.setdefault(lower[low[: -len(UNC_SUFFIX + ".json")]], {})["unc_json"] = p
            elif low.endswith(UNC_SUFFIX + ".npy") and low[: -len(UNC_SUFFIX + ".npy")] in lower:
                aux.setdefault(lower[low[: -len(UNC_SUFFIX + ".npy")]], {})["unc_map"] = p
    if case_ids is not None:
        wanted = [str(c) for c in case_ids]
        lower_preds = {cid.lower(): cid for cid in preds}
        lower_truth = {cid.lower(): cid for cid in truth}
        for cid in wanted:
            if cid.lower() not in lower_preds:
                problems.append(f"case {cid}: no prediction in {pred_dir} (expected {cid}{PRED_SUFFIX}.npy)")
            if truth_dir is not None and cid.lower() not in lower_truth:
                problems.append(f"case {cid}: no truth file in {truth_dir} (expected a file named like "
                                f"{mask_pattern})")
        ids = [lower_truth.get(c.lower(), lower_preds.get(c.lower(), c)) for c in wanted]
    else:
        ids = sorted(preds, key=natural_key)
        if not ids:
            problems.append(f"no predictions in {pred_dir}: expected files named <case>{PRED_SUFFIX}.npy (or "
                            ".nii.gz), or named like the truth files")
        skipped = sorted((cid for cid in truth if cid not in preds), key=natural_key)
        if skipped:
            notes.append(f"{len(skipped)} truth file(s) in {truth_dir} have no prediction and were not scored: "
                         + ", ".join(skipped[:20]) + (" ..." if len(skipped) > 20 else ""))
    if problems:
        raise InputDataError(listing("problem(s) with the files to score; nothing was written", problems))
    vols = _volume_files(volumes_dir, modality_patterns or {}) if volumes_dir is not None else {}
    sidecars = _sidecars(volumes_dir, truth_dir)
    modalities = list(modality_patterns or {})
    cases = []
    for cid in ids:
        t = truth.get(cid)
        v = vols.get(cid.lower(), {})
        if v and set(v) != set(modalities):
            notes.append(f"case {cid}: volumes for {sorted(v)} only (expected {modalities}); HU biomarkers and "
                         "overlays left out")
            v = {}
        elif volumes_dir is not None and not v:
            notes.append(f"case {cid}: no volumes in {volumes_dir}; HU biomarkers and overlays left out")
        a = aux.get(cid, {})
        cases.append(CaseFiles(cid, _choose(preds[cid], t), t, {m: v[m] for m in modalities if m in v},
                               sidecars.get(cid.lower()), a.get("unc_json"), a.get("unc_map")))
    return cases, notes


# ------------------------------------------------------------------ score
def _sidecar(case: CaseFiles) -> dict:
    return read_sidecar(case.sidecar, case.case_id) if case.sidecar is not None else {}


def _uncertainty(case: CaseFiles) -> dict:
    if case.uncertainty is None:
        return {}
    try:
        data = json.loads(case.uncertainty.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputDataError(f"case {case.case_id}: {case.uncertainty} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputDataError(f"case {case.case_id}: {case.uncertainty} must hold a JSON object")
    return {k: data[k] for k in UNCERTAINTY_KEYS if k in data}


def _metrics(pred: np.ndarray, truth, spacing, num_classes: int, slice_gaps=None) -> dict:
    """Binary metrics for a 1-class model; per-class metrics (suffix _c<k>) otherwise.
    `slice_gaps` (sidecar): components and distances never join slices across a gap."""
    if num_classes == 1:
        return case_metrics(pred > 0, None if truth is None else truth > 0, spacing, slice_gaps)
    out = {}
    for c in range(1, num_classes):
        m = case_metrics(pred == c, None if truth is None else truth == c, spacing, slice_gaps)
        out.update({f"{k}_c{c}": v for k, v in m.items()})
    return out


def _biomarkers(pred, truth, spacing, volumes, windows, intensity, affine, num_classes: int) -> dict:
    if num_classes == 1:
        return biomarker_row(pred > 0, None if truth is None else truth > 0, spacing, volumes, windows,
                             intensity, affine)
    out = {}
    for c in range(1, num_classes):
        row = biomarker_row(pred == c, None if truth is None else truth == c, spacing, volumes, windows,
                            intensity, affine)
        out.update({f"{k}_c{c}": v for k, v in row.items()})
    return out


def score_case(case: CaseFiles, num_classes: int, modalities=(), windows: dict | None = None,
               default_spacing=None) -> dict:
    """One metrics row: metrics, biomarkers (pred_/true_), uncertainty. Raises InputDataError."""
    cid = case.case_id
    pred_raw, pred_info = load_array(case.pred, f"case {cid} prediction")
    pred = as_labels(pred_raw, f"case {cid} prediction {case.pred.name}")
    truth, truth_info = None, {}
    if case.truth is not None:
        truth_raw, truth_info = load_array(case.truth, f"case {cid} truth")
        truth = as_labels(truth_raw, f"case {cid} truth {case.truth.name}")
        if truth.shape != pred.shape:
            raise InputDataError(f"case {cid}: shape mismatch, prediction {case.pred.name} is {pred.shape} but "
                                 f"truth {case.truth.name} is {truth.shape}")
    for what, arr in (("prediction", pred), ("truth", truth)):
        if arr is not None and arr.size and int(arr.max()) > max(num_classes - 1, 1):
            raise InputDataError(f"case {cid} {what} holds label {int(arr.max())}, more than a "
                                 f"{num_classes}-class scoring allows")
    side = _sidecar(case)
    spacing = side.get("spacing_mm") or truth_info.get("zooms") or pred_info.get("zooms") or default_spacing
    spacing = None if spacing is None else tuple(float(s) for s in spacing)
    affine = side.get("affine_ras")
    if affine is None:
        affine = truth_info.get("affine", pred_info.get("affine"))
    volumes = None
    if case.volumes:
        volumes = {}
        for m in modalities:
            arr = load_npy(case.volumes[m], what=f"case {cid} {m}")
            if arr.shape != pred.shape:
                raise InputDataError(f"case {cid}: shape mismatch, {m} volume {case.volumes[m].name} is "
                                     f"{arr.shape} but the prediction is {pred.shape}")
            volumes[m] = arr
    gaps = side.get("slice_gaps")
    if gaps is not None and not (isinstance(gaps, list) and all(isinstance(k, int) and not isinstance(k, bool)
                                                                  for k in gaps)):
        raise InputDataError(f"case {cid}: sidecar slice_gaps must be a list of slice indices, got {gaps!r:.60}")
    row = {"case_id": cid, **_metrics(pred, truth, spacing, num_classes, gaps or None)}
    try:
        row.update(_biomarkers(pred, truth, spacing, volumes, windows, side.get("intensity", "HU"), affine,
                               num_classes))
    except ValueError as exc:
        raise InputDataError(f"case {cid}: {exc}") from exc
    row.update(_uncertainty(case))
    return row


def infer_num_classes(cases: list[CaseFiles]) -> int:
    """1 for binary masks (0/1, 0/255), else the largest truth/prediction label + 1
    (unreadable files are skipped here; `score_cases` reports them)."""
    top = 1
    for case in cases:
        for path in (case.truth, case.pred):
            if path is not None:
                try:
                    arr, _ = load_array(path, f"case {case.case_id}")
                    top = max(top, int(as_labels(arr, f"case {case.case_id} {path.name}").max(initial=0)))
                except InputDataError:
                    continue        # reported with every other problem when the case is scored
    return 1 if top <= 1 else top + 1


def biomarker_names(modalities=(), suffix: str = "") -> list[str]:
    """Biomarkers compared across cases: geometry, then HU per modality, then perviousness."""
    names = list(GEOMETRY_BIOMARKERS)
    for m in modalities:
        names += [f"{modality_key(m)}_mean_hu", f"{modality_key(m)}_median_hu"]
    names.append("perviousness_hu")
    return [n + suffix for n in names]


def case_dice(row: dict) -> float | None:
    """The case's Dice: `dice`, or the mean over classes of dice_c<k>."""
    if row.get("dice") is not None:
        return row["dice"]
    vals = [v for k, v in row.items() if re.fullmatch(r"dice_c\d+", k) and v is not None]
    return float(np.mean(vals)) if vals else None


def cohort_statistics(rows: list[dict], modalities=()) -> dict:
    """{"biomarker_agreement", "uncertainty_ranking", "biomarker_units"} of labelled rows."""
    labelled = [r for r in rows if r.get("case_type", "") != "unlabeled"]
    per_class = split_by_class(labelled)
    if per_class is None:
        table = agreement_table(labelled, biomarker_names(modalities))
    else:
        table = {}
        for name, class_rows in per_class.items():
            table.update({f"{k} ({name})": v for k, v in agreement_table(class_rows,
                                                                         biomarker_names(modalities)).items()})
    out = {"biomarker_agreement": table,
           "biomarker_agreement_note": "predicted vs true biomarker over all labelled cases; a case where a "
                                       "biomarker is undefined (HU or length of an empty mask) drops out of its "
                                       "pairs; statistics are null with fewer than 3 pairs or a constant series",
           "biomarker_units": {k: unit_of(k) for k in sorted({re.sub(r"^(pred|true)_", "", k) for r in rows
                                                               for k in r if re.match(r"^(pred|true)_", k)})
                               if unit_of(k) or k in BIOMARKER_UNITS}}
    scored = [r for r in labelled if r.get("uncertainty_score") is not None]
    if scored:
        out["uncertainty_ranking"] = {**uncertainty_ranking([r["uncertainty_score"] for r in scored],
                                                            [case_dice(r) for r in scored]),
                                      "score": "uncertainty_score", "against": "dice"}
    return out


def score_cases(cases: list[CaseFiles], out_dir, *, modalities=(), windows: dict | None = None,
                default_spacing=None, num_classes: int | None = None, n_resamples: int = 5000, seed: int = 0,
                meta: dict | None = None, notes=(), log=print) -> dict:
    """Score matched cases (see `match_cases`) and write metrics.csv + summary.json
    (labelled) or predictions.json (no truth at all); return the summary.

    Args:
        modalities, windows: the cohort's modality names (channel order) and
            their HU windows (WINDOWS_HU), for the attenuation biomarkers.
        default_spacing: (row, col, slice) mm for cases without a sidecar
            spacing or NIfTI header (config VOXEL_SPACING_MM), or None.
        num_classes: 1 (binary) or K; None infers it from the labels.
    """
    if not cases:
        raise InputDataError("no cases to score")
    if num_classes is None:
        num_classes = infer_num_classes(cases)
    rows, problems = [], []
    for case in cases:
        try:
            rows.append(score_case(case, num_classes, modalities, windows, default_spacing))
        except InputDataError as exc:
            problems.append(str(exc))
    if problems:
        raise InputDataError(listing("problem(s) with the files to score; nothing was written", problems))
    notes = list(notes)
    gapped = [r["case_id"] for r in rows if any(k.startswith("n_slice_gaps") and v for k, v in r.items())]
    if gapped:
        notes.append(f"{len(gapped)} case(s) have slices that are not adjacent in the source (gaps in the slice "
                     f"numbers: {', '.join(gapped[:5])}{' ...' if len(gapped) > 5 else ''}); their 3D components "
                     "and surface distances are computed within each run of adjacent slices, never across a gap")
    labelled = [r for r in rows if r.get("case_type") != "unlabeled"]
    meta = {**(meta or {}), "num_classes": num_classes, "modalities": list(modalities)}
    out_dir = Path(out_dir)
    if all(c.truth is None for c in cases):
        summary = {"meta": meta, "cases": rows, "notes": notes,
                   "note": "unlabeled cases: predictions, biomarkers and uncertainty only, no metrics"}
        summary = _jsonable(summary)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / PREDICTIONS_JSON, summary)
        return summary
    if any(c.truth is None for c in cases):
        missing = [c.case_id for c in cases if c.truth is None]
        raise InputDataError(f"case(s) {', '.join(missing)} have no truth; score labelled cases only")
    extra = {**cohort_statistics(labelled, modalities), "notes": notes}
    summary = write_report(rows, out_dir, n_resamples=n_resamples, seed=seed, meta=meta, extra=extra)
    for note in notes:
        log(f"note: {note}")
    return summary


def score_folder(pred_dir, truth_dir, out_dir, volumes_dir=None, *, mask_pattern: str = DEFAULT_MASK_PATTERN,
                 modality_patterns: dict | None = None, windows: dict | None = None, default_spacing=None,
                 num_classes: int | None = None, case_ids=None, n_resamples: int = 5000, seed: int = 0,
                 meta: dict | None = None, log=print) -> tuple[dict, list[CaseFiles]]:
    """`match_cases` + `score_cases`: (summary, the matched cases). See the module docstring."""
    cases, notes = match_cases(pred_dir, truth_dir, volumes_dir, mask_pattern=mask_pattern,
                               modality_patterns=modality_patterns, case_ids=case_ids)
    meta = {"predictions": str(Path(pred_dir).resolve()),
            "truth": None if truth_dir is None else str(Path(truth_dir).resolve()),
            "volumes": None if volumes_dir is None else str(Path(volumes_dir).resolve()), **(meta or {})}
    summary = score_cases(cases, out_dir, modalities=list(modality_patterns or {}), windows=windows,
                          default_spacing=default_spacing, num_classes=num_classes, n_resamples=n_resamples,
                          seed=seed, meta=meta, notes=notes, log=log)
    return summary, cases


def read_summary(out_dir) -> dict:
    """summary.json (labelled) or predictions.json (unlabelled) of a scored folder."""
    out_dir = Path(out_dir)
    for name in (SUMMARY_NAME, PREDICTIONS_JSON):
        if (out_dir / name).is_file():
            return json.loads((out_dir / name).read_text(encoding="utf-8"))
    raise InputDataError(f"{out_dir} has no {SUMMARY_NAME} or {PREDICTIONS_JSON}; run the score step first")
