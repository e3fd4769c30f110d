"""Stage 5: test a trained run, in three steps with files between them (nnU-Net style).

  1. predict  (this module; the only step that imports Keras): every case is
     sliced on the fly and predicted plain and with horizontally and
     vertically flipped slices (`flip_ensemble`: the three members in one
     model on the device; `predict_stream`; loading runs ahead in a thread,
     writing in a thread pool); the prediction is
     the flip average when the resolved post-processing says `tta_flips`,
     else the plain member, thresholded and filtered as it says. Writes
     predictions/<case>_pred.npy, _prob.npy (SAVE_PROBABILITIES), the voxel
     uncertainty map _unc.npy (float16, std of the three members) and the
     case score _unc.json; for cases imported from NIfTI or DICOM also
     <case>_pred.nii.gz on the source grid and, from DICOM, <case>_seg.dcm
     (DICOM-SEG referencing the source series).
  2. score    `clotseg.evaluation.scoring.score_folder`: the predictions
     folder against the truth folder -> metrics.csv, summary.json (the same
     function as `python -m clotseg.evaluate`).
  3. render   `clotseg.evaluation.rendering.render_report`: overlays,
     montage, Bland-Altman and uncertainty plots, report.html.

Output: <run>/Testing/ (replaced atomically on every run; see output_dir)
    predictions/       step 1
    metrics.csv, summary.json (labelled) or predictions.json (unlabelled)
    overlays/<case>.png, montage.png, bland_altman_{volume,length}.png,
    uncertainty_vs_dice.png, report.html, manifest.json

No import of another stage (names and run lookup live in clotseg.layout).
"""

from __future__ import annotations

import os
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clotseg.cohort import Case, check_case, discover_cases, read_sidecar
from clotseg.errors import ClotSegError, StageError
from clotseg.inference import (average_models, flip_ensemble, mean_of, member_inputs, postprocess, predict_stream,
                               prefetch, split_members, to_mask)
from clotseg.intensity import center_crop
from clotseg.io import atomic_save_npy, atomic_write_json, fingerprint, load_npy, read_json, staged_dir, write_manifest
from clotseg.postprocessing import resolve as resolve_postprocessing
from clotseg.layout import (BEST_MODEL, POSTPROCESSING_FILE, RUN_CONFIG, RUN_SPLIT, TEST_PREDICTIONS_DIR, TESTING,
                            TESTING_DIR, check_best_model, ensemble_dir, load_run_settings, preprocessed_inputs,
                            resolve_run, resolve_runs, testing_dir)
from clotseg.settings import Settings

OUT_DIR = TESTING_DIR
PREDICTIONS_DIR = TEST_PREDICTIONS_DIR
FLIP_MEMBERS = ("plain", "horizontal flip", "vertical flip")
UNCERTAINTY_METHOD = "std"

__all__ = ["load_model", "output_dir", "predict_cases", "resolve_run", "run_evaluation", "select_cases"]


def load_model(run: Path, jit_compile="auto"):
    """Load a run's best model with Keras safe mode (no Lambda/unpickling).

    `jit_compile` ("auto", True, False) sets XLA for prediction as
    `clotseg.runtime.resolve_jit` decides for training.
    """
    from clotseg.quiet import load_backend

    keras = load_backend()  # the only Keras import of testing: fd 2 quiet while the backend starts
    import myModels  # noqa: F401  (registers the custom losses and metrics)
    from clotseg import runtime

    path = run / BEST_MODEL
    try:
        # compile=False: prediction needs no loss or optimizer (older runs saved them)
        model = keras.models.load_model(path, safe_mode=True, compile=False)
    except ValueError as exc:
        raise StageError(f"refusing to load {path}: {exc}") from exc
    model.jit_compile = runtime.resolve_jit(jit_compile)
    return model


# what an ensemble's runs must share: one input slice means the same to every member
ENSEMBLE_SHARED = ("modalities", "model_input_shape", "windows_hu", "context_slices", "symmetry_channels",
                   "num_classes", "preprocess")


def check_ensemble(runs: list[Path], trained: list[Settings]) -> None:
    """StageError (one line) when the runs of an ensemble differ in what their inputs or outputs mean
    (prepared cohorts: also the spacing they were resampled to)."""
    shared = ENSEMBLE_SHARED + (("target_spacing_mm",) if trained[0].preprocess else ())
    for run, other in zip(runs[1:], trained[1:]):
        for name in shared:
            a, b = getattr(trained[0], name), getattr(other, name)
            if a != b:
                raise StageError(f"runs {runs[0].name} and {run.name} cannot be averaged: {name.upper()} "
                                 f"{a!r} vs {b!r}")


def select_cases(settings: Settings, run: Path, input_dir: Path | None, mask_dir: Path | None) -> list[Case]:
    """The run's Testing cohort, or every case of `input_dir` (masks optional)."""
    if input_dir is not None:
        custom = settings.replace(volume_dir=str(input_dir), mask_dir=str(mask_dir or input_dir))
        return discover_cases(custom, require_masks=False)
    test_ids = testing_ids(run)
    by_id = {c.case_id: c for c in discover_cases(settings, require_masks=False)}
    missing = [cid for cid in test_ids if cid not in by_id]
    if missing:
        raise StageError(f"Testing cases of run {run.name} are missing from {settings.volume_path}: {missing}")
    return [by_id[cid] for cid in test_ids]


def testing_ids(run: Path) -> list[str]:
    """The case ids of a run's Testing cohort, from its saved split."""
    split_path = run / RUN_SPLIT
    if not split_path.is_file():
        raise StageError(f"run {run.name} has no {RUN_SPLIT.as_posix()}; name the cases with --input-dir")
    return read_json(split_path)["cohorts"][TESTING]


def output_dir(run: Path, input_dir: Path | None, output: Path | None = None) -> Path:
    """Where a testing command writes: `output` when given; <run>/Testing for
    the run's own Testing cohort; <run>/Testing_<input folder name> for
    --input-dir, so predicting other cases never replaces the run's scores."""
    if output is not None:
        return Path(output).resolve()
    return testing_dir(run, input_dir)


def target_name(settings: Settings) -> str:
    """What is segmented, for logs and reports (TARGET_NAME, "clot" by default)."""
    return settings.target_name


# ------------------------------------------------------------------ step 1
def _foreground(members: list[np.ndarray]) -> list[np.ndarray]:
    """Foreground probability of each member: p for a sigmoid, 1 - p(background) for a softmax."""
    return [m[..., 0] if m.shape[-1] == 1 else 1.0 - m[..., 0] for m in members]


def _export(case: Case, pred: np.ndarray, prob_fg: np.ndarray | None, pred_dir: Path, num_classes: int,
            target: str, log) -> tuple[list[str], list[str]]:
    """NIfTI (and DICOM-SEG) of an imported case; ([written file names], [problems]). Never raises for
    a case that cannot be exported: the problem is logged and the case keeps its .npy prediction."""
    if case.sidecar is None:
        return [], []
    side = read_sidecar(case.sidecar, case.case_id)
    importer = side.get("importer")
    if importer not in ("nifti", "dicom"):
        return [], []
    from clotseg.evaluation.export import ExportError, save_dicom_seg, save_nifti_prediction

    written, problems = [], []
    jobs = [(f"{case.case_id}_pred.nii.gz", lambda out: save_nifti_prediction(pred, side, out))]
    if prob_fg is not None:
        jobs.append((f"{case.case_id}_prob.nii.gz",
                     lambda out: save_nifti_prediction(prob_fg.astype(np.float32), side, out)))
    if importer == "dicom":
        modalities = side.get("modalities") or list(case.volumes)
        series = (side.get("source_files") or {}).get(modalities[0]) if modalities else None
        labels = ({1: target.capitalize()} if num_classes == 1
                  else {k: f"{target.capitalize()} class {k}" for k in range(1, num_classes)})

        def dicom_seg(out, series=series, labels=labels):
            if not series or not Path(series).is_dir():
                raise ExportError(f"the source DICOM series {series} is not available")
            return save_dicom_seg(pred, series, out, sidecar=side, segment_labels=labels)

        jobs.append((f"{case.case_id}_seg.dcm", dicom_seg))
    for name, job in jobs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                job(pred_dir / name)
                written.append(name)
            except (ExportError, ClotSegError, OSError, ValueError) as exc:
                problems.append(f"case {case.case_id}: {name} not written: {exc}")
        for w in caught:
            if issubclass(w.category, UserWarning):
                problems.append(f"case {case.case_id}: {name}: {w.message}")
    for p in problems:
        log(f"warning: {p}")
    return written, problems


def _prepare_case(case: Case, trained: Settings, vessels: bool = False, default_spacing=None,
                  lumen: bool = False) -> tuple:
    """Host side of one case's prediction: (case, (h, w, D), slice gaps,
    near, inputs), the inputs uint8 (D, H, W, C') (`member_inputs`; the
    flipped members are made on the device by `flip_ensemble`); near:
    (vessel mask (h, w, D) bool or None, spacing mm, CTA (h, w, D) int16 HU
    or None), the first with `vessels` for the vessel filter, the last with
    `lumen` for the lumen filter (`clotseg.vessels`), or None when neither is
    on. The other loaded HU volumes are dropped here, so only model inputs
    (and what the filters read) wait in the queue."""
    from clotseg.vessels import case_vessels, cta_volume

    windows = [trained.windows_hu[m] for m in trained.modalities]
    vols = [load_npy(p, what=f"case {case.case_id} {m}") for m, p in case.volumes.items()]
    gaps = case.slice_gaps()
    near = None
    if vessels or lumen:
        vessel, spacing = case_vessels(case, vols, trained.modalities, default_spacing) if vessels else (None, None)
        near = (vessel, spacing, cta_volume(vols, trained.modalities) if lumen else None)
    (inputs,) = member_inputs(vols, windows, trained.input_shape[:2], tta_flips=False,
                              context_slices=trained.context_slices, symmetry=trained.symmetry_channels,
                              slice_gaps=gaps)
    return case, vols[0].shape, gaps, near, inputs


def _prepare(cases: list[Case], trained: Settings, workers: int = 1, vessels: bool = False, default_spacing=None,
             lumen: bool = False):
    """`_prepare_case` of every case, in case order, `workers` cases at a time.

    One thread windows a few hundred slices a second; a GPU predicts
    thousands, so the loading and windowing of consecutive cases overlap
    (numpy releases the GIL for the copies). At most `workers` cases are in
    flight, so memory stays bounded. Run by `prefetch` in its thread.
    """
    if workers <= 1:
        for case in cases:
            yield _prepare_case(case, trained, vessels, default_spacing, lumen)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clotseg-prepare")
    pending: deque[Future] = deque()
    try:
        for case in cases:
            pending.append(pool.submit(_prepare_case, case, trained, vessels, default_spacing, lumen))
            if len(pending) >= workers:
                yield pending.popleft().result()   # a bad input raises here, at its case's position
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _finish_case(case: Case, probs: list[np.ndarray], shape: tuple, gaps, trained: Settings, post, pred_dir: Path,
                 save_probabilities: bool, target: str, near=None) -> tuple[list[str], list[str], list[str]]:
    """Everything after the forward passes of one case (runs in a worker thread).

    `probs`: float32 (D, H, W, K) members: the plain prediction and those of
    the horizontally and vertically flipped inputs, flipped back; `near`: (vessel
    mask, spacing mm, CTA HU) when the vessel or lumen filter is on (`_prepare_case`). Writes <case>_pred.npy, _prob.npy, _unc.npy,
    _unc.json and the exports; returns (written exports, problems, log lines).
    Log lines are returned rather than printed so the caller replays them in
    case order, from one thread, whatever order the workers finish in.
    """
    from clotseg.evaluation.uncertainty import case_uncertainty, uncertainty_map

    # (h, w, D, K) views of the (D, H, W, K) predictions, cropped: the math below is
    # elementwise, so it runs in the predictions' own memory order without transposed copies
    members = [center_crop(np.moveaxis(p, 0, 2), shape[:2]) for p in probs]
    prob = mean_of(members) if post.tta_flips else members[0]
    vessel, spacing, cta = near if near is not None else (None, None, None)
    pred = postprocess(to_mask(prob, post.threshold), post.min_component_voxels, post.keep_largest_component,
                       slice_gaps=gaps or None, prob=prob, min_peak=post.min_component_peak,
                       vessel=vessel, spacing_mm=spacing, max_vessel_mm=post.max_vessel_distance_mm,
                       cta=cta, max_cta_hu=post.max_component_cta_hu)
    cid = case.case_id
    # the arrays are (h, w, D) views in the predictions' (D, h, w) memory order: one
    # transposing copy each before saving (np.save of a strided array is 5x slower)
    pred = np.ascontiguousarray(pred)
    atomic_save_npy(pred_dir / f"{cid}_pred.npy", pred)
    prob_fg = None
    if save_probabilities:
        atomic_save_npy(pred_dir / f"{cid}_prob.npy",
                        np.ascontiguousarray((prob[..., 0] if prob.shape[-1] == 1 else prob).astype(np.float16)))
        prob_fg = _foreground([prob])[0]
    fg = _foreground(members)
    umap = uncertainty_map(fg, UNCERTAINTY_METHOD)
    atomic_save_npy(pred_dir / f"{cid}_unc.npy", np.ascontiguousarray(umap.astype(np.float16)))
    score = case_uncertainty(fg, threshold=post.threshold, method=UNCERTAINTY_METHOD, unc_map=umap)
    atomic_write_json(pred_dir / f"{cid}_unc.json", {"case_id": cid, **score, "members": list(FLIP_MEMBERS),
                                                     "threshold": post.threshold})
    lines: list[str] = []
    written, bad = _export(case, pred, prob_fg, pred_dir, trained.num_classes, target, lines.append)
    return written, bad, lines


def _predicted_cases(ensemble, prepared, batch_size: int):
    """The forward passes of the whole cohort as one `predict_stream` through
    `flip_ensemble`: yields (case, (h, w, D), gaps, near, [plain, h-flip,
    v-flip] float32 (D, H, W, K) views) in case order. Batches span case
    boundaries (only the cohort's last batch is padded)."""
    meta: dict[int, tuple] = {}   # filled before the case's rows enter the stream, so it is there when they leave

    def items():
        for i, (case, shape, gaps, near, inputs) in enumerate(prepared):
            meta[i] = (case, shape, gaps, near)
            yield i, inputs

    for i, probs in predict_stream(ensemble, items(), batch_size):
        yield (*meta.pop(i), split_members(probs, len(FLIP_MEMBERS)))


def predict_cases(model, cases: list[Case], trained: Settings, post, pred_dir: Path, *, batch_size: int = 32,
                  save_probabilities: bool = False, target: str = "clot", log=print, workers: int | None = None,
                  ensemble=None, default_spacing=None) -> dict:
    """Step 1: predictions, uncertainty maps/scores and exports of every case into `pred_dir`.

    Three stages overlap, so host work runs while the accelerator predicts:
      loading + windowing                    `prefetch` thread (2-4 cases at a time
                                             with workers > 1), 2 cases ahead;
      forward passes (3 members per case)    this thread, one `predict_stream`
                                             through `flip_ensemble` (the flips
                                             happen on the device) for the whole
                                             cohort (full batches);
      post-processing, uncertainty, writes   `workers` threads (default: half the
                                             CPUs, 2 to 8).
    At most 2 * workers finished-prediction cases wait for a worker, so memory
    stays bounded; results are collected in case order, so files, logs and
    the returned dict are those of the one-case-at-a-time loop.

    `ensemble`: the model that predicts the three members, (B, H, W, C) ->
    (B, H, W, 3K); default `flip_ensemble(model)` (bench/benchmark.py passes
    a free stand-in to measure the host side alone). `default_spacing`: the
    (row, col, slice) mm of a case whose sidecar gives none, for the vessel
    filter (VOXEL_SPACING_MM; None = 1 mm).

    Returns {"n_slices", "seconds", "slices_per_second", "batch_size",
    "exports": {case: [files]}, "export_problems": [...]}.
    """
    pred_dir.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 1
    # measured on a 16-core GPU host: one thread post-processes a few hundred slices a second
    workers = max(1, workers or min(8, max(2, cpus // 2)))
    prepare_workers = 1 if workers == 1 else min(4, max(2, cpus // 6))
    n_slices, exports, problems = 0, {}, []
    started = time.perf_counter()
    vessels, lumen = post.max_vessel_distance_mm > 0, post.max_component_cta_hu > 0
    prepared = prefetch(_prepare(cases, trained, prepare_workers, vessels, default_spacing, lumen), depth=2)
    pending: deque[tuple[Case, int, Future]] = deque()   # (case, slices, its worker's future), case order
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clotseg-post")
    bar = tqdm(total=len(cases), desc="Predicting", unit="case")

    def collect_oldest():
        nonlocal n_slices
        case, depth, future = pending.popleft()
        written, bad, lines = future.result()  # a worker's exception is raised here, in the caller
        n_slices += depth
        for line in lines:
            log(line)
        if written:
            exports[case.case_id] = written
        problems.extend(bad)
        bar.update(1)

    try:
        ensemble = flip_ensemble(model) if ensemble is None else ensemble
        for case, shape, gaps, near, probs in _predicted_cases(ensemble, prepared, batch_size):
            future = pool.submit(_finish_case, case, probs, shape, gaps, trained, post, pred_dir,
                                 save_probabilities, target, near)
            pending.append((case, shape[2], future))
            while len(pending) > 2 * workers:  # back-pressure: predictions wait for the writers
                collect_oldest()
        while pending:
            collect_oldest()
    finally:
        prepared.close()                       # stops the loader thread on an early exit
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    elapsed = time.perf_counter() - started
    return {"n_slices": n_slices, "seconds": round(elapsed, 2),
            "slices_per_second": round(n_slices / elapsed, 1) if elapsed > 0 else None,
            "batch_size": batch_size, "exports": exports, "export_problems": problems}


# ------------------------------------------------------------ all three
def run_evaluation(settings: Settings, run_name: str | list | None = None, input_dir: Path | None = None,
                   mask_dir: Path | None = None, log=print, output: Path | None = None) -> dict:
    """Predict, score and render; return the summary (or {"cases": ..., "note"} unlabeled).

    `run_name`: a run, or several runs (else TEST_RUN, else the latest run). Several runs are
    tested as one ensemble: their inputs must mean the same (`check_ensemble`), they must hold out
    the same Testing cases (FOLDs of one split) unless `input_dir` names other cases, their
    models' probabilities are averaged (`average_models`) and the outputs go to
    Trainings/Ensemble_<k>runs_<hash>/Testing[_<folder>] (`clotseg.layout.ensemble_dir`).
    """
    from clotseg import runtime
    from clotseg.evaluation.rendering import render_report
    from clotseg.evaluation.report import markdown_table
    from clotseg.evaluation.scoring import score_folder

    runs = resolve_runs(settings, run_name)   # several: an ensemble, their probabilities averaged
    run = runs[0]
    for r in runs:
        if not (r / RUN_CONFIG).is_file():
            raise StageError(f"run {r.name} has no {RUN_CONFIG.as_posix()}; it cannot be tested")
    trained_all = [load_run_settings(r, settings.root) for r in runs]
    trained = trained_all[0]
    if trained.modalities != settings.modalities:
        raise StageError(f"run {run.name} was trained on modalities {trained.modalities} "
                         f"but config.py now names {settings.modalities}")
    check_ensemble(runs, trained_all)
    if input_dir is None and trained.preprocess:
        settings = preprocessed_inputs(settings)     # the run's Testing cohort is in the prepared cohort
    cases = select_cases(settings, run, input_dir, mask_dir)
    if not cases:
        raise StageError("no cases to test")
    if input_dir is None:
        for r in runs[1:]:   # a Testing case of one member must not be another's training case
            if testing_ids(r) != [c.case_id for c in cases]:
                raise StageError(f"runs {run.name} and {r.name} hold out different Testing cases, so one may "
                                 "have trained on the other's test cases: train the members as folds of one "
                                 "split (config.py FOLD) or test them on other cases (--input-dir)")
    check_settings = trained.replace(volume_dir=settings.volume_dir, mask_dir=settings.mask_dir)
    for case in cases:  # every case checked before any prediction is written
        check_case(case, check_settings)
    for r, t in zip(runs, trained_all):
        check_best_model(r, t)  # truncated/corrupt file or other inputs/classes: one line, before Keras
    models = [load_model(r, settings.jit_compile) for r in runs]
    for r, m in zip(runs, models):
        if tuple(m.input_shape[1:]) != tuple(trained.model_input_shape):
            raise StageError(f"the model in {r / BEST_MODEL.parent} takes inputs {tuple(m.input_shape[1:])} but "
                             f"the run's {RUN_CONFIG.as_posix()} describes {trained.model_input_shape}")
    model = models[0] if len(models) == 1 else average_models(models)
    # an ensemble's probabilities are not any member's: none of the members' tuned choices
    # applies, so it takes config.py's values and the defaults (0.5, no TTA, no filter)
    tuned_path = run / POSTPROCESSING_FILE
    tuned = read_json(tuned_path) if tuned_path.is_file() and len(runs) == 1 else None
    post = resolve_postprocessing(settings, tuned if trained.num_classes == 1 else None)
    labelled = all(c.mask is not None for c in cases)
    target = target_name(settings)
    if output is None and len(runs) > 1:
        out_path = testing_dir(ensemble_dir(settings, runs), input_dir)
    else:
        out_path = output_dir(run, input_dir, output)
    if len(runs) > 1:
        log(f"[test] ensemble of {len(runs)} runs ({', '.join(r.name for r in runs)}): their probabilities "
            f"averaged; post-processing from config.py or the defaults")
    volumes_dir = next(iter(cases[0].volumes.values())).parent
    truth_dir = cases[0].mask.parent if labelled else None
    with staged_dir(out_path) as out:
        pred_dir = out / PREDICTIONS_DIR
        predicted = predict_cases(model, cases, trained, post, pred_dir,
                                  batch_size=runtime.inference_batch_size(settings.batch_size),
                                  save_probabilities=settings.save_probabilities, target=target, log=log,
                                  default_spacing=settings.voxel_spacing_mm)
        log(f"[test] predict: {len(cases)} case(s), {predicted['n_slices']} slices in {predicted['seconds']:.1f} s "
            f"(plain + 2 flip members each; prediction from the {'flip average' if post.tta_flips else 'plain member'})")
        meta = {"run": run.name if len(runs) == 1 else ensemble_dir(settings, runs).name, **post.as_dict(),
                **({"ensemble_runs": [r.name for r in runs]} if len(runs) > 1 else {}),
                "postprocessing_source": "validation-tuned" if tuned else "default",
                "prediction_from": "mean of plain and flip members" if post.tta_flips else "plain member",
                "uncertainty": f"{UNCERTAINTY_METHOD} over members {', '.join(FLIP_MEMBERS)}",
                "model": trained.model, "context_slices": trained.context_slices, "target_name": target,
                "n_cases": len(cases), **predicted}
        summary, scored = score_folder(pred_dir, truth_dir, out, volumes_dir, mask_pattern=settings.mask_pattern,
                                       modality_patterns={m: settings.modality_patterns[m] for m in trained.modalities},
                                       windows=dict(trained.windows_hu), default_spacing=settings.voxel_spacing_mm,
                                       num_classes=trained.num_classes, case_ids=[c.case_id for c in cases],
                                       n_resamples=settings.bootstrap_resamples, seed=settings.random_seed,
                                       meta=meta, log=log)
        log(f"[test] score: {'metrics.csv, summary.json' if labelled else 'predictions.json (unlabelled)'}")
        report = render_report(out, scored, modalities=trained.modalities, windows=dict(trained.windows_hu),
                               display_windows=settings.display_windows_hu,
                               run_dir=run if len(runs) == 1 else None, target_name=target, log=log,
                               title=f"ClotSeg test report: {run.name}" if len(runs) == 1 else
                               f"ClotSeg test report: ensemble of {', '.join(r.name for r in runs)}")
        log(f"[test] render: figures and {report.name}")
        write_manifest(out, "test", fingerprint([c.signature() for c in cases]),
                       **{k: v for k, v in meta.items() if k not in ("exports", "export_problems")})
    if labelled:
        log(markdown_table(summary))
        rank = summary.get("uncertainty_ranking") or {}
        if rank.get("spearman_rho") is not None:
            log(f"Uncertainty score vs Dice: Spearman rho {rank['spearman_rho']:.2f} (n = {rank['n']})")
    # last line of the run: where its outputs are
    log(f"[test] {len(cases)} case(s); outputs in {out_path} (open {out_path / 'report.html'})")
    return summary
