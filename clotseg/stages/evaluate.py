"""Stage 5: predict the Testing cohort (or new, unlabeled cases) and report.

Output: <run>/Testing/ (replaced atomically on every run)
    predictions/<case>_pred.npy   uint8 (H, W, D) mask, the input's shape
    predictions/<case>_prob.npy   float16 probabilities (SAVE_PROBABILITIES)
    metrics.csv, summary.json     per-case metrics and their summary (labelled cases)
    overlays/<case>.png, montage.png
    manifest.json
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clotseg.cohort import Case, check_case, discover_cases, load_case
from clotseg.errors import StageError
from clotseg.evaluation.figures import best_slice_index, case_overlay, montage
from clotseg.evaluation.metrics import case_metrics
from clotseg.evaluation.report import markdown_table, write_report
from clotseg.intensity import normalise_mask
from clotseg.io import atomic_save_npy, atomic_write_json, fingerprint, read_json, staged_dir, write_manifest
from clotseg.settings import Settings
from clotseg.inference import postprocess, predict_volume, to_mask
from clotseg.postprocessing import resolve as resolve_postprocessing
from clotseg.stages.split import SPLIT_FILE
from clotseg.stages.train import POSTPROCESSING_FILE, list_runs, load_run_settings

OUT_DIR = "Testing"


def resolve_run(settings: Settings, name: str | None = None) -> Path:
    """The run to test: `name`, else TEST_RUN, else the latest with a best model."""
    name = name or settings.test_run
    if name:
        if not re.fullmatch(r"[\w.\-]+", name) or name in (".", ".."):
            raise StageError(f"run name {name!r} must be a folder name under {settings.trainings_path}")
        run = settings.trainings_path / name
        if not (run / "Best_Model" / "model.keras").is_file():
            raise StageError(f"run {name!r} has no Best_Model/model.keras under {settings.trainings_path}")
        return run
    runs = [r for r in list_runs(settings) if (r / "Best_Model" / "model.keras").is_file()]
    if not runs:
        raise StageError(f"no trained model under {settings.trainings_path}; run `python training.py` first")
    return runs[-1]


def load_model(run: Path, jit_compile="auto"):
    """Load a run's best model with Keras safe mode (no Lambda/unpickling).

    `jit_compile` ("auto", True, False) sets XLA for prediction as
    `clotseg.runtime.resolve_jit` decides for training.
    """
    import keras

    import myModels  # noqa: F401  (registers the custom losses and metrics)
    from clotseg import runtime

    path = run / "Best_Model" / "model.keras"
    try:
        # compile=False: prediction needs no loss or optimizer (older runs saved them)
        model = keras.models.load_model(path, safe_mode=True, compile=False)
    except ValueError as exc:
        raise StageError(f"refusing to load {path}: {exc}") from exc
    model.jit_compile = runtime.resolve_jit(jit_compile)
    return model


def select_cases(settings: Settings, run: Path, input_dir: Path | None, mask_dir: Path | None) -> list[Case]:
    """The run's Testing cohort, or every case of `input_dir` (masks optional)."""
    if input_dir is not None:
        custom = settings.replace(volume_dir=str(input_dir), mask_dir=str(mask_dir or input_dir))
        return discover_cases(custom, require_masks=False)
    split_path = run / "Relevant_Files" / SPLIT_FILE
    if not split_path.is_file():
        raise StageError(f"run {run.name} has no Relevant_Files/{SPLIT_FILE}; name the cases with --input-dir")
    test_ids = read_json(split_path)["cohorts"]["Testing"]
    by_id = {c.case_id: c for c in discover_cases(settings, require_masks=False)}
    missing = [cid for cid in test_ids if cid not in by_id]
    if missing:
        raise StageError(f"Testing cases of run {run.name} are missing from {settings.volume_path}: {missing}")
    return [by_id[cid] for cid in test_ids]


def output_dir(run: Path, input_dir: Path | None, output: Path | None = None) -> Path:
    """Where a testing command writes: `output` when given; <run>/Testing for
    the run's own Testing cohort; <run>/Testing_<input folder name> for
    --input-dir, so predicting other cases never replaces the run's scores."""
    if output is not None:
        return Path(output).resolve()
    if input_dir is None:
        return run / OUT_DIR
    name = re.sub(r"[^\w.\-]+", "_", Path(input_dir).resolve().name) or "input"
    return run / f"{OUT_DIR}_{name}"


def run_evaluation(settings: Settings, run_name: str | None = None, input_dir: Path | None = None,
                   mask_dir: Path | None = None, log=print, output: Path | None = None) -> dict:
    """Predict, score and report; return the summary (or {"n_cases": n} unlabeled)."""
    run = resolve_run(settings, run_name)
    trained = load_run_settings(run, settings.root)
    if trained.modalities != settings.modalities:
        raise StageError(f"run {run.name} was trained on modalities {trained.modalities} "
                         f"but config.py now names {settings.modalities}")
    cases = select_cases(settings, run, input_dir, mask_dir)
    if not cases:
        raise StageError("no cases to test")
    check_settings = trained.replace(volume_dir=settings.volume_dir, mask_dir=settings.mask_dir)
    for case in cases:  # every case checked before any prediction is written
        check_case(case, check_settings)
    model = load_model(run, settings.jit_compile)
    if tuple(model.input_shape[1:]) != tuple(trained.model_input_shape):
        raise StageError(f"the model in {run / 'Best_Model'} takes inputs {tuple(model.input_shape[1:])} but the "
                         f"run's Relevant_Files/config.json describes {trained.model_input_shape}")
    tuned_path = run / POSTPROCESSING_FILE
    tuned = read_json(tuned_path) if tuned_path.is_file() else None
    post = resolve_postprocessing(settings, tuned if trained.num_classes == 1 else None)
    windows = [trained.windows_hu[m] for m in trained.modalities]
    hw = trained.input_shape[:2]
    labelled = all(c.mask is not None for c in cases)
    rows, tiles, started = [], [], time.perf_counter()
    n_slices = 0
    target = output_dir(run, input_dir, output)
    with staged_dir(target) as out:
        (out / "predictions").mkdir()
        (out / "overlays").mkdir()
        for case in tqdm(cases, desc="Testing", unit="case"):
            vols, truth = load_case(case)
            n_slices += vols[0].shape[2]
            prob = predict_volume(model, vols, windows, hw, batch_size=max(settings.batch_size, 32),
                                  tta_flips=post.tta_flips, context_slices=trained.context_slices)
            pred = postprocess(to_mask(prob, post.threshold), post.min_component_voxels,
                               post.keep_largest_component)
            atomic_save_npy(out / "predictions" / f"{case.case_id}_pred.npy", pred)
            if settings.save_probabilities:
                atomic_save_npy(out / "predictions" / f"{case.case_id}_prob.npy",
                                (prob[..., 0] if prob.shape[-1] == 1 else prob).astype(np.float16))
            spacing = case.spacing_mm(settings.voxel_spacing_mm)
            truth_labels = None if truth is None else normalise_mask(truth)
            metrics = _score(pred, truth_labels, spacing, trained.num_classes)
            rows.append({"case_id": case.case_id, **metrics})
            k = best_slice_index(truth_labels if truth_labels is not None else pred, pred)
            cta = vols[0][..., k]
            second = vols[1][..., k] if len(vols) > 1 else None
            truth_k = truth_labels[..., k] if truth_labels is not None else None
            dice = metrics.get("dice")
            title = f"{case.case_id} slice {k}" + (f"  Dice {dice:.2f}" if dice is not None else "")
            case_overlay(cta, second, truth_k, pred[..., k], out / "overlays" / f"{case.case_id}.png", title,
                         windows=tuple(windows), names=tuple(trained.modalities))
            tiles.append((case.case_id, cta, second, truth_k, pred[..., k], dice))
        elapsed = time.perf_counter() - started
        montage(tiles, out / "montage.png", windows=tuple(windows))
        meta = {"run": run.name, **post.as_dict(),
                "postprocessing_source": "validation-tuned" if tuned else "default",
                "model": trained.model, "context_slices": trained.context_slices,
                "n_cases": len(cases), "n_slices": n_slices, "seconds": round(elapsed, 2),
                "slices_per_second": round(n_slices / elapsed, 1) if elapsed > 0 else None}
        if labelled:
            summary = write_report(rows, out, n_resamples=settings.bootstrap_resamples,
                                   seed=settings.random_seed, meta=meta)
        else:
            summary = {"meta": meta, "cases": rows, "note": "unlabeled cases: predictions only, no metrics"}
            atomic_write_json(out / "predictions.json", summary)
        write_manifest(out, "test", fingerprint([c.signature() for c in cases]), **meta)
    log(f"[test] {len(cases)} case(s), {n_slices} slices in {elapsed:.1f} s; outputs in {target}")
    if labelled:
        log(markdown_table(summary))
    return summary


def _score(pred: np.ndarray, truth, spacing, num_classes: int) -> dict:
    """Binary metrics for a 1-class model; per-class metrics (suffix _c<k>) otherwise."""
    if num_classes == 1:
        return case_metrics(pred > 0, None if truth is None else truth > 0, spacing)
    out = {}
    for c in range(1, num_classes):
        m = case_metrics(pred == c, None if truth is None else truth == c, spacing)
        out.update({f"{k}_c{c}": v for k, v in m.items()})
    return out
