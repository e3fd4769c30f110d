"""Step 3 of testing: figures and the HTML report of a scored folder.

    render_report(out_dir, cases, modalities=..., windows=...)

reads what the score step wrote into `out_dir` (metrics.csv + summary.json,
or predictions.json for unlabelled cases) and the case files (predictions,
uncertainty maps, truth, volumes; `scoring.CaseFiles`), never a model, and
writes into `out_dir`

  overlays/<case>.png        the slice with the most target (truth, else prediction):
                             every modality, titled with its name, truth green and
                             prediction red, a zoom, and the uncertainty map when saved
  montage.png                every case on one page (first modality)
  bland_altman_volume.png    predicted vs true clot volume (Bland-Altman)
  bland_altman_length.png    predicted vs true clot length
  uncertainty_vs_dice.png    case uncertainty score vs Dice, Spearman rho in the title
  report.html                self-contained page: summary with CIs, agreement,
                             uncertainty ranking, sortable case table, every
                             figure embedded, relative links to all other files

Modality names, their count and HU windows come from the caller (the run's
settings); nothing assumes CTA/NCCT. Cases without volumes (scoring another
tool's output without --volumes) get no overlay; the montage is left out
when no case has one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from clotseg.evaluation.agreement import bland_altman_plot
from clotseg.evaluation.biomarkers import unit_of
from clotseg.evaluation.figures import best_slice_index, modality_overlay, montage, plot_training_curves
from clotseg.evaluation.html_report import write_html_report
from clotseg.evaluation.report import CSV_NAME, SUMMARY_NAME, read_metrics_csv
from clotseg.evaluation.scoring import PREDICTIONS_JSON, CaseFiles, as_labels, case_dice, load_array, read_summary
from clotseg.evaluation.uncertainty import uncertainty_scatter_plot
from clotseg.io import load_npy, read_json
from clotseg.layout import HISTORY, TRAINING_CURVES

OVERLAYS = "overlays"
MONTAGE = "montage.png"
BLAND_ALTMAN = {"volume": ("volume_mm3", "volume_vox"), "length": ("length_mm", "length_vox")}
UNCERTAINTY_PLOT = "uncertainty_vs_dice.png"


def read_rows(out_dir) -> list[dict]:
    """The case rows the score step wrote (metrics.csv, else predictions.json's cases)."""
    out_dir = Path(out_dir)
    if (out_dir / CSV_NAME).is_file():
        return read_metrics_csv(out_dir / CSV_NAME)
    return list(read_summary(out_dir).get("cases") or [])


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def figure_windows(windows: dict, display: dict | None, raw: bool = False) -> dict:
    """{modality: (low, high) or None} the pictures of one case use.

    `windows` are the model's (WINDOWS_HU), `display` DISPLAY_WINDOWS_HU.
    A display window replaces the model's only for HU data: not where the
    model window is None (volumes already normalised) nor for a case whose
    sidecar says "intensity": "raw" (8-bit slice imports), where a HU brain
    window would clip the image to white.
    """
    display = {} if raw else dict(display or {})
    return {m: (tuple(display[m]) if m in display and w is not None else w) for m, w in windows.items()}


def _is_raw(case: CaseFiles) -> bool:
    """Whether the case's sidecar marks its intensities as raw image values (not HU)."""
    if case.sidecar is None or not Path(case.sidecar).is_file():
        return False
    try:
        side = read_json(case.sidecar)
    except (OSError, ValueError):
        return False          # the score step has already reported a broken sidecar
    return isinstance(side, dict) and side.get("intensity") == "raw"


def _overlay(case: CaseFiles, out_png: Path, modalities, windows: dict, dice, target_name: str):
    """(overlay path, montage tile) of one case, or (None, None) without volumes."""
    if not case.volumes or any(m not in case.volumes for m in modalities):
        return None, None
    pred = as_labels(load_array(case.pred, f"case {case.case_id} prediction")[0], f"case {case.case_id} prediction")
    truth = None
    if case.truth is not None:
        truth = as_labels(load_array(case.truth, f"case {case.case_id} truth")[0], f"case {case.case_id} truth")
    k = best_slice_index(truth if truth is not None and truth.any() else pred, pred)
    slices = [np.asarray(load_npy(case.volumes[m], mmap=True, what=f"case {case.case_id} {m}")[..., k])
              for m in modalities]
    unc = None
    if case.uncertainty_map is not None:
        umap = load_npy(case.uncertainty_map, mmap=True, what=f"case {case.case_id} uncertainty map")
        if umap.shape == pred.shape:
            unc = np.asarray(umap[..., k], dtype=np.float32)
    truth_k = truth[..., k] if truth is not None else None
    title = f"{case.case_id} slice {k}" + (f"  Dice {dice:.2f}" if isinstance(dice, float) else "")
    png = modality_overlay(slices, truth_k, pred[..., k], out_png, title,
                           windows=[windows.get(m) for m in modalities], names=list(modalities),
                           uncertainty_slice=unc)
    second = slices[1] if len(slices) > 1 else None
    return png, (case.case_id, slices[0], second, truth_k, pred[..., k], dice)


def _pick(rows: list[dict], candidates) -> str | None:
    for key in candidates:
        if any(r.get(f"pred_{key}") is not None and r.get(f"true_{key}") is not None for r in rows):
            return key
    return None


def _case_links(case: CaseFiles, out_dir: Path) -> list[tuple[str, str]]:
    links = [("prediction", _rel(case.pred, out_dir))]
    folder, cid = case.pred.parent, case.case_id
    extra = [("probabilities", f"{cid}_prob.npy"), ("uncertainty map", f"{cid}_unc.npy"),
             ("uncertainty score", f"{cid}_unc.json"), ("NIfTI", f"{cid}_pred.nii.gz"),
             ("NIfTI probabilities", f"{cid}_prob.nii.gz"), ("DICOM-SEG", f"{cid}_seg.dcm")]
    for label, name in extra:
        if (folder / name).is_file() and folder / name != case.pred:
            links.append((label, _rel(folder / name, out_dir)))
    if case.truth is not None:
        links.append(("truth", _rel(case.truth, out_dir)))
    return links


def render_report(out_dir, cases: list[CaseFiles], *, modalities=(), windows: dict | None = None,
                  display_windows: dict | None = None, run_dir=None, title: str = "ClotSeg test report",
                  target_name: str = "clot", log=print) -> Path:
    """Write the figures and report.html into `out_dir` (see the module docstring); return report.html.

    windows: the model's HU window per modality; display_windows: the
    pictures' windows where they differ (DISPLAY_WINDOWS_HU, see `figure_windows`).
    """
    out_dir = Path(out_dir)
    modalities = list(modalities)
    model_windows = dict(windows or {})
    raw = {case.case_id: _is_raw(case) for case in cases}     # each sidecar read once
    # the montage shares one window per modality: the model's when any case is not HU
    windows = figure_windows(model_windows, display_windows, raw=any(raw.values()))
    summary = read_summary(out_dir)
    rows = read_rows(out_dir)
    by_id = {str(r.get("case_id")): r for r in rows}
    overlays, tiles = {}, []
    for case in cases:
        dice = case_dice(by_id.get(case.case_id, {}))
        case_windows = figure_windows(model_windows, display_windows, raw=raw[case.case_id])
        png, tile = _overlay(case, out_dir / OVERLAYS / f"{case.case_id}.png", modalities, case_windows,
                             dice, target_name)
        if png is not None:
            overlays[case.case_id] = png
            tiles.append(tile)
    images: dict = {"overlays": overlays}
    if tiles:
        images[f"Montage ({modalities[0]}, slice with the most {target_name})"] = montage(
            tiles, out_dir / MONTAGE, windows=tuple(windows.get(m) for m in modalities),
            title=f"{modalities[0]}: truth green, prediction red")
    if run_dir is not None:
        curves = Path(run_dir) / TRAINING_CURVES
        history = Path(run_dir) / HISTORY
        if not curves.is_file() and history.is_file():
            curves = plot_training_curves(history, out_dir / TRAINING_CURVES)
        if curves.is_file():
            images["Training curves"] = curves
    labelled = [r for r in rows if r.get("case_type") != "unlabeled"]
    for what, candidates in BLAND_ALTMAN.items():
        key = _pick(labelled, candidates)
        if key is None:
            continue
        png = bland_altman_plot([r.get(f"pred_{key}") for r in labelled], [r.get(f"true_{key}") for r in labelled],
                                out_dir / f"bland_altman_{what}.png", title=f"Bland-Altman: {target_name} {what}",
                                unit=unit_of(key), labels=[r.get("case_id") for r in labelled])
        images[f"Bland-Altman: {target_name} {what}"] = png
    scored = [r for r in labelled if r.get("uncertainty_score") is not None]
    if scored:
        images["Uncertainty vs Dice"] = uncertainty_scatter_plot(
            [r["uncertainty_score"] for r in scored], [case_dice(r) for r in scored], out_dir / UNCERTAINTY_PLOT,
            labels=[r.get("case_id") for r in scored])
    outputs = [(name, name) for name in (CSV_NAME, SUMMARY_NAME, PREDICTIONS_JSON, MONTAGE, "bland_altman_volume.png",
                                         "bland_altman_length.png", UNCERTAINTY_PLOT) if (out_dir / name).is_file()]
    if cases:
        pred_folder = cases[0].pred.parent
        outputs.append(("predictions folder", _rel(pred_folder, out_dir) + "/"))
    if overlays:
        outputs.append(("overlays folder", OVERLAYS + "/"))
    files = {"outputs": outputs, "cases": {c.case_id: _case_links(c, out_dir) for c in cases}}
    report = write_html_report(out_dir, summary, rows, images, title=title, files=files, target_name=target_name)
    return report
