"""ClotSeg quality benchmark: train on one phantom cohort, score on unseen ones.

    python -m bench.quality --scale cpu [--preset cpu] [--set NAME=VALUE ...]
                            [--repeats 3] [--first-repeat 0] [--label TEXT] [--out bench/results/NAME.json]
                            [--train-domain first-build] [--cta-mip-slices 9] [--slice-axis 1]

For each repeat r (seed offset r) it writes, in a temporary project folder:
  - a training cohort of phantom cases (seed 1000 + r, domain "standard"),
    split into Training / Validation by the pipeline as a user's would be;
  - a test cohort of unseen cases (seed 2000 + r, standard domain, at least
    40 cases including clot-free controls), and a "shifted" test cohort
    (seed 3000 + r, the phantom's deliberately different domain: other noise,
    calibre, contrast and blur ranges), and a "first-build" test cohort
    (seed 4000 + r) of another generator: the first build's phantom, frozen
    in bench/first_build_phantom.py (other geometry, small clots at other
    sites), which the training never sees (unless --train-domain first-build
    trains on that generator instead: a user's cohort unlike ours). No test cohort is used for any
    choice: the post-processing is tuned on the Validation cases only.
It then runs `python training.py`'s code path (prepare_data, run_training)
with the preset plus overrides and testing.py's code path (run_evaluation
on each test cohort), and prints one JSON object and a Markdown table:
clot-case mean / median / 95% bootstrap CI of Dice, case sensitivity,
false-positive components per case, specificity on clot-free cases, HD95,
training seconds and the settings. With several repeats it adds the spread
(mean and min..max over repeats).

Scales: "cpu" = 128 px cases, the `cpu` preset, a training budget of at
most 20 minutes on a 2-core machine; "gpu" = up to 256 px cases, the `gpu`
preset, at most 5 minutes on one H100; "demo" = the README demo's preset
on 40 training cases (its own 5-minute cap, about 10 minutes a run); "tiny" = seconds, for the test suite
(plumbing only, the figures mean nothing).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCALES = {
    "cpu": {"preset": "cpu", "train_cases": 50, "test_cases": 40, "in_plane": (96, 128), "slices": (20, 48),
            "budget_minutes": 20.0},
    # the README demo as a user (or an independent check) runs it: 40 training cases, its own
    # 5-minute cap; 40 unseen test cases. About 10 minutes per run, for quick comparisons
    "demo": {"preset": "demo", "train_cases": 40, "test_cases": 40, "in_plane": (96, 128), "slices": (20, 48),
             "budget_minutes": 5.0},
    "gpu": {"preset": "gpu", "train_cases": 200, "test_cases": 60, "in_plane": (192, 256), "slices": (24, 64),
            "budget_minutes": 5.0},
    "tiny": {"preset": None, "train_cases": 6, "test_cases": 4, "in_plane": (32, 48), "slices": (6, 8),
             "budget_minutes": 2.0,
             "overrides": {"INPUT_SHAPE": (64, 64, 2), "BASE_FILTERS": 4, "DEPTH": 2, "EPOCHS": 1,
                           "TARGET_SAMPLE_SIZE_AUG_TRAIN": 16, "TARGET_SAMPLE_SIZE_AUG_VAL": 8, "BATCH_SIZE": 8,
                           "NUM_WORKERS": 1, "BOOTSTRAP_RESAMPLES": 100}},
}
CLOT_FREE_FRACTION = 0.2
HEADLINE = ("dice_mean", "dice_median", "dice_ci", "case_sensitivity", "fp_components_per_case",
            "specificity", "hd95_median", "n_clot_cases", "n_clot_free_cases")


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def parse_overrides(items: list[str]) -> dict:
    """["NAME=VALUE", ...] -> {NAME: python value} (VALUE as a Python literal, else a string)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--set expects NAME=VALUE, got {item!r}")
        name, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[name.strip().upper()] = value
    return out


# test cohort -> seed base (plus the repeat); "first-build" is another generator
TEST_DOMAINS = {"standard": 2000, "shifted": 3000, "first-build": 4000}


def _write_chunk(volume_dir: Path, mask_dir: Path, first_id: int, n: int, seed: int, scale: dict,
                 domain: str) -> None:
    """Cases CS<first_id> .. CS<first_id + n - 1> of a cohort (each case's draws depend only on
    the cohort seed and its own id, so chunks written apart equal the cohort written at once)."""
    if domain == "first-build":
        from bench.first_build_phantom import write_cohort as first_build

        first_build(volume_dir, mask_dir, n, seed=seed, first_id=first_id, in_plane=scale["in_plane"],
                    slices=scale["slices"], clot_free_fraction=CLOT_FREE_FRACTION, progress=False)
        return
    from clotseg.phantom import write_cohort

    kwargs = dict(in_plane=scale["in_plane"], slices=scale["slices"], clot_free_fraction=CLOT_FREE_FRACTION,
                  progress=False)
    if "domain" in inspect.signature(write_cohort).parameters:
        kwargs["domain"] = domain
    elif domain != "standard":
        raise SystemExit("this phantom has no `domain` option")
    write_cohort(volume_dir, mask_dir, n, seed=seed, first_id=first_id, **kwargs)


CASES_PER_WRITER = 8  # a spawned writer costs ~1-2 s to start: only worth it for several cases each


def _write_phantom(volume_dir: Path, mask_dir: Path, n: int, seed: int, scale: dict, domain: str) -> None:
    """Cases CS1..CSn of one cohort; with more cores than two and enough cases, in parallel
    processes over contiguous id ranges (the same files as one process writes)."""
    writers = min(os.cpu_count() or 1, n // CASES_PER_WRITER)
    if writers <= 2:
        _write_chunk(volume_dir, mask_dir, 1, n, seed, scale, domain)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    bounds = [round(i * n / writers) for i in range(writers + 1)]
    # spawn, not fork: an earlier repeat may have started TensorFlow/JAX threads in this process
    with ProcessPoolExecutor(writers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(_write_chunk, volume_dir, mask_dir, lo + 1, hi - lo, seed, scale, domain)
                for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
        for job in jobs:
            job.result()


def headline(summary: dict) -> dict:
    """The benchmark's figures from a testing summary.json."""
    clot = summary["metrics_clot_cases"]
    det = summary["detection"]
    dice, hd95 = clot["dice"], clot.get("hd95", {})
    return {"dice_mean": dice.get("mean"), "dice_median": dice.get("median"),
            "dice_ci": [dice.get("ci_low"), dice.get("ci_high")],
            "case_sensitivity": det["case_sensitivity"], "lesion_sensitivity": det["lesion_sensitivity"],
            "fp_components_per_case": det["fp_components_per_case"], "specificity": det["specificity"],
            "hd95_median": hd95.get("median"), "hd95_unit": hd95.get("unit"),
            "n_clot_cases": det["n_clot_cases"], "n_clot_free_cases": det["n_clot_free_cases"]}


def write_cta_mips(volume_dir: Path, slices: int) -> int:
    """Beside every CS<ID>_CTA_Binary.npy of `volume_dir`, CS<ID>_CTAMIP_Binary.npy:
    the CTA's maximum over the `slices` (odd) slices around each slice, a
    thick-slab maximum-intensity projection (HU, float32, the CTA's shape;
    edge slices repeat). Files already there are kept. Returns how many were written.

    The twenty-third round fed it as a third modality (bench/README.md):
    `--set MODALITY_PATTERNS=...CTAMIP...`, a window for it and one more channel.
    """
    import numpy as np
    from scipy import ndimage

    from clotseg.io import atomic_save_npy

    written = 0
    for cta_path in sorted(Path(volume_dir).glob("CS*_CTA_Binary.npy")):
        target = cta_path.with_name(cta_path.name.replace("_CTA_Binary", "_CTAMIP_Binary"))
        if target.exists():
            continue
        cta = np.load(cta_path)
        atomic_save_npy(target, ndimage.maximum_filter1d(cta, size=slices, axis=2, mode="nearest").astype(cta.dtype))
        written += 1
    return written


def slice_view(volume_dir: Path, mask_dir: Path, axis: int) -> int:
    """Rewrite a cohort so that its 2D slices are taken along `axis` (0: coronal planes, 1: sagittal
    planes, of (H, W, D) axial volumes): every CS<ID>_*.npy volume and mask gets `axis` moved to
    the last place (np.moveaxis), and the sidecar's "shape" and "spacing_mm" follow, with
    "slice_axis" recorded. An array already in the new order is left alone (it has the sidecar's
    recorded shape permuted), so a second call or one after a crash finishes the job. Returns
    how many files were rewritten.

    The twenty-eighth round trained models on other planes (`--slice-axis`) to see whether an
    artery that stops across axial slices, which no axial slice marks, is seen in the planes where
    it runs (bench/README.md); `bench/ensemble.py` moves such a member's probabilities back.
    """
    import numpy as np

    from clotseg.io import atomic_save_npy, atomic_write_json, load_npy, npy_header, read_json

    if axis == 2:
        return 0
    order = [i for i in range(3) if i != axis] + [axis]
    written = 0
    for side_path in sorted(Path(volume_dir).glob("CS*.json")):
        side = read_json(side_path)
        case = side_path.stem
        original = tuple(side.get("original_shape") or side["shape"])
        target = tuple(original[i] for i in order)
        files = sorted(Path(volume_dir).glob(f"{case}_*.npy")) + sorted(Path(mask_dir).glob(f"{case}_*.npy"))
        for f in files:
            shape, _ = npy_header(f)
            if tuple(shape) == target and (target != original or side.get("slice_axis") == axis):
                continue
            if tuple(shape) != original:
                print(f"bench.quality: {f}: shape {tuple(shape)} is neither the sidecar's {original} nor "
                      f"{target}", file=sys.stderr)
                raise SystemExit(2)
            atomic_save_npy(f, np.ascontiguousarray(np.moveaxis(load_npy(f), axis, -1)))
            written += 1
        if side.get("slice_axis") != axis:
            spacing = side.get("spacing_mm")
            side.update({"original_shape": list(original), "shape": list(target), "slice_axis": axis})
            if spacing is not None:
                side["original_spacing_mm"] = side.get("original_spacing_mm") or list(spacing)
                side["spacing_mm"] = [side["original_spacing_mm"][i] for i in order]
            atomic_write_json(side_path, side)
    return written


def slice_axis_of(project: Path) -> int:
    """The axis a quality repeat's model was trained along (the sidecars of its run's training
    volumes, VOLUME_DIR; 2 = axial, also without a finished run)."""
    from clotseg.io import read_json
    from clotseg.layout import load_run_settings

    run = latest_run(project)
    if run is None:
        return 2
    for side_path in sorted(load_run_settings(run, project).volume_path.glob("CS*.json")):
        return int(read_json(side_path).get("slice_axis", 2))
    return 2


def latest_run(project: Path) -> Path | None:
    """The newest finished run (a folder with a run.json) of a quality repeat's Trainings/, or None:
    the run `--reuse` scores again, and the model the other bench scripts take from a repeat."""
    runs = sorted((Path(project) / "Trainings").glob("*/run.json"))
    return runs[-1].parent if runs else None


def plain_postprocessing(settings):
    """`settings` with the plain post-processing (`clotseg.postprocessing.DEFAULT`: threshold 0.5,
    no flip TTA, no component filter), each as a config.py value, so testing uses it instead of
    the run's tuned choice."""
    from clotseg.postprocessing import DEFAULT

    return settings.replace(**DEFAULT.as_dict())


def run_once(scale_name: str, preset: str | None, overrides: dict, repeat: int, workdir: Path,
             test_domains=("standard", "shifted", "first-build"), untuned: bool = False, reuse: bool = False,
             retune: bool = False, train_domain: str = "standard", cta_mip_slices: int = 0,
             train_cases: int | None = None, slice_axis: int = 2) -> dict:
    """One training + testing round; returns figures per test cohort.

    `train_domain` names the generator of the training cohort (seed 1000 +
    repeat): "first-build" trains and tunes on the other generator, as a user
    with a cohort unlike clotseg.phantom would; its "first-build" test cohort
    (seed 4000 + repeat) is then the same generator, unseen. `cta_mip_slices`
    > 0 also writes every cohort's slab MIPs (`write_cta_mips`). `train_cases`
    replaces the scale's number of training cases (split 78/20/2 as always);
    the phantom seeds each case by its number, so a larger cohort holds the
    smaller one's cases. `slice_axis` 0 or 1 rewrites every cohort so that the
    model is trained and tested on coronal or sagittal planes (`slice_view`).
    """
    from clotseg.settings import Settings

    scale = SCALES[scale_name]
    project = workdir / f"repeat{repeat}"
    if project.exists() and not reuse:
        shutil.rmtree(project)
    project.mkdir(parents=True, exist_ok=True)
    values = {**scale.get("overrides", {}), **overrides}
    base = Settings.from_file(ROOT / "config.py", preset=preset)
    # the repeat's seed: config.py's RANDOM_SEED (or --set RANDOM_SEED=N, e.g. a second model trained
    # on the same training cohort with another split, initialisation and sample order) plus the repeat
    seed = values.get("RANDOM_SEED", base.random_seed)
    settings_values = {**base.to_dict(), **values, "PRESET": None, "RANDOM_SEED": seed + repeat,
                       "TRAIN_PERC": 0.78, "VAL_PERC": 0.2}
    settings = Settings.from_dict(settings_values, root=project)
    if settings.max_training_minutes is None:
        settings = settings.replace(max_training_minutes=scale["budget_minutes"])

    log(f"[quality] repeat {repeat}: writing cohorts in {project}")
    if not (reuse and settings.volume_path.is_dir()):
        _write_phantom(settings.volume_path, settings.mask_path, train_cases or scale["train_cases"],
                       1000 + repeat, scale, train_domain)
    if cta_mip_slices:
        write_cta_mips(settings.volume_path, cta_mip_slices)
    slice_view(settings.volume_path, settings.mask_path, slice_axis)
    tests = {}
    for domain, seed_base in TEST_DOMAINS.items():
        seed = seed_base + repeat
        if domain in test_domains:
            folder = project / f"test_{domain}"
            if not (reuse and folder.is_dir()):
                _write_phantom(folder / "volumes", folder / "masks", scale["test_cases"], seed, scale, domain)
            if cta_mip_slices:
                write_cta_mips(folder / "volumes", cta_mip_slices)
            slice_view(folder / "volumes", folder / "masks", slice_axis)
            tests[domain] = folder

    from clotseg.pipeline import prepare_data
    from clotseg.stages.evaluate import run_evaluation
    from clotseg.stages.train import run_training
    from clotseg.io import read_json

    started = time.perf_counter()
    run = latest_run(project) if reuse else None
    if run is not None:  # --reuse: score the finished run of an earlier call again (e.g. after a crash in testing)
        prep_seconds = None
        log(f"[quality] reusing run {run}")
        if retune:  # choose the post-processing again with today's code (same Validation cases)
            from clotseg.stages.train import tune_run_postprocessing
            tune_run_postprocessing(settings, run, log)
    else:
        prepare_data(settings, log=log, demo_if_empty=False)
        prep_seconds = time.perf_counter() - started
        run = run_training(settings, log=log)
    record = read_json(run / "run.json")
    post = read_json(run / "postprocessing.json") if (run / "postprocessing.json").is_file() else None
    result = {"repeat": repeat, "train_domain": train_domain, "slice_axis": slice_axis, "run": run.name,
              "data_seconds": None if prep_seconds is None else round(prep_seconds, 1),
              "training_seconds": record.get("training_seconds"), "epochs_done": record.get("epochs_done"),
              "best_val_dice": record.get("best_val_dice"),
              "postprocessing": post["chosen"] if post else None, "cohorts": {}}
    for domain, folder in tests.items():
        t0 = time.perf_counter()
        summary = run_evaluation(settings, run_name=run.name, input_dir=folder / "volumes",
                                 mask_dir=folder / "masks", output=project / f"Testing_{domain}", log=log)
        result["cohorts"][domain] = {**headline(summary), "testing_seconds": round(time.perf_counter() - t0, 1)}
        if untuned:  # the same model without the validation-tuned post-processing (0.5, no TTA, no filter)
            summary = run_evaluation(plain_postprocessing(settings), run_name=run.name, input_dir=folder / "volumes",
                                     mask_dir=folder / "masks", output=project / f"Testing_{domain}_untuned", log=log)
            result["cohorts"][f"{domain} (untuned post-processing)"] = headline(summary)
    result["settings"] = {k: v for k, v in settings.to_dict().items()
                          if k not in ("PRESETS", "VOLUME_DIR", "MASK_DIR", "PROCESSED_DIR", "TRAININGS_DIR")}
    return result


def spread(results: list[dict]) -> dict:
    """Mean and min..max over repeats of each headline figure, per cohort."""
    out = {}
    for domain in results[0]["cohorts"]:
        out[domain] = {}
        for key in ("dice_mean", "dice_median", "case_sensitivity", "fp_components_per_case", "specificity",
                    "hd95_median"):
            vals = [r["cohorts"][domain][key] for r in results if r["cohorts"][domain][key] is not None]
            if vals:
                out[domain][key] = {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals)}
    secs = [r["training_seconds"] for r in results if r["training_seconds"] is not None]
    out["training_seconds"] = {"mean": sum(secs) / len(secs), "min": min(secs), "max": max(secs)} if secs else None
    return out


def markdown(report: dict) -> str:
    def f(v, d=3):
        return "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))

    trained_on = report.get("train_domain", "standard")
    lines = [f"### {report['label']} (scale {report['scale']}, preset {report['preset']}, "
             f"overrides {report['overrides'] or 'none'}"
             + ("" if trained_on == "standard" else f", trained on {trained_on}") + ")", "",
             "| repeat | test cohort | clot-case Dice mean [95% CI] | median | case sensitivity | "
             "FP components/case | specificity | HD95 median | train s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["repeats"]:
        for domain, c in r["cohorts"].items():
            ci = c["dice_ci"]
            lines.append(f"| {r['repeat']} | {domain} | {f(c['dice_mean'])} [{f(ci[0])}, {f(ci[1])}] | "
                         f"{f(c['dice_median'])} | {f(c['case_sensitivity'])} ({c['n_clot_cases']} clot cases) | "
                         f"{f(c['fp_components_per_case'], 2)} | {f(c['specificity'])} "
                         f"({c['n_clot_free_cases']} controls) | {f(c['hd95_median'], 1)} {c.get('hd95_unit') or ''} | "
                         f"{f(r['training_seconds'], 0)} |")
    if len(report["repeats"]) > 1:
        lines += ["", "Spread over repeats (mean, min..max):", ""]
        for domain, figs in report["spread"].items():
            if domain == "training_seconds" or not figs:
                continue
            lines.append(f"- {domain}: " + "; ".join(
                f"{k} {v['mean']:.3f} ({v['min']:.3f}..{v['max']:.3f})" for k, v in figs.items()))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--preset", default=None, help="preset of config.py (default: the scale's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="override a setting, e.g. --set CONTEXT_SLICES=0 (repeatable)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--first-repeat", type=int, default=0, metavar="R",
                        help="start at repeat R (seed offset R): --first-repeat 2 --repeats 1 adds a third "
                             "seed beside an earlier call's repeat0 and repeat1 in the same --workdir")
    parser.add_argument("--label", default=None, help="a name for this configuration in the table")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the projects here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--test-domains", default=",".join(TEST_DOMAINS),
                        help=f"comma-separated, of {', '.join(TEST_DOMAINS)} (default: all)")
    parser.add_argument("--train-domain", default="standard",
                        help=f"generator of the training cohort, one of {', '.join(TEST_DOMAINS)} (default: standard)")
    parser.add_argument("--reuse", action="store_true",
                        help="with --workdir: keep its cohorts and score its finished run again instead of training")
    parser.add_argument("--retune", action="store_true",
                        help="with --reuse: choose the run's post-processing again on its Validation cases first")
    parser.add_argument("--cta-mip-slices", type=int, default=0, metavar="N",
                        help="also write each case's CTA maximum over N (odd) slices as CS<ID>_CTAMIP_Binary.npy, "
                             "for a MODALITY_PATTERNS that names it (bench/README.md, twenty-third round)")
    parser.add_argument("--train-cases", type=int, default=None, metavar="N",
                        help="write N training cases instead of the scale's (cpu 50, demo 40): how much more "
                             "data buys at the same training budget (bench/README.md, twenty-fourth round)")
    parser.add_argument("--slice-axis", type=int, default=2,
                        help="train and test on the planes along this volume axis: 2 axial (default), "
                             "0 coronal, 1 sagittal (bench/README.md, twenty-eighth round)")
    parser.add_argument("--untuned", action="store_true",
                        help="also test the same model with the plain post-processing (0.5, no TTA, no filter)")
    args = parser.parse_args(argv)

    if args.repeats < 1 or args.first_repeat < 0:
        parser.exit(2, "bench.quality: --repeats must be at least 1 and --first-repeat at least 0\n")
    domains = tuple(d for d in args.test_domains.split(",") if d)
    unknown = sorted(set(domains) - set(TEST_DOMAINS))
    if unknown or not domains:
        parser.exit(2, f"bench.quality: --test-domains: unknown {', '.join(unknown) or '(none given)'}; "
                       f"choose from {', '.join(TEST_DOMAINS)}\n")
    if args.cta_mip_slices and (args.cta_mip_slices < 3 or args.cta_mip_slices % 2 == 0):
        parser.exit(2, f"bench.quality: --cta-mip-slices must be an odd number of at least 3 (or 0), "
                       f"got {args.cta_mip_slices}\n")
    if args.train_cases is not None and args.train_cases < 5:
        parser.exit(2, f"bench.quality: --train-cases must be at least 5 (a Training, a Validation and a "
                       f"Testing share), got {args.train_cases}\n")
    if args.slice_axis not in (0, 1, 2):
        parser.exit(2, f"bench.quality: --slice-axis must be 0, 1 or 2, got {args.slice_axis}\n")
    if args.train_domain not in TEST_DOMAINS:
        parser.exit(2, f"bench.quality: --train-domain: unknown {args.train_domain}; "
                       f"choose from {', '.join(TEST_DOMAINS)}\n")
    scale = SCALES[args.scale]
    preset = args.preset if args.preset is not None else scale["preset"]
    overrides = parse_overrides(args.overrides)
    seed = overrides.get("RANDOM_SEED", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        parser.exit(2, f"bench.quality: --set RANDOM_SEED expects an integer of at least 0 (each repeat adds "
                       f"its number), got {seed!r}\n")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clotseg-quality-"))
    results = []
    try:
        # Keras progress bars go to stdout: keep stdout for the JSON and the table
        with contextlib.redirect_stdout(sys.stderr):
            for r in range(args.first_repeat, args.first_repeat + args.repeats):
                results.append(run_once(args.scale, preset, overrides, r, workdir, domains, args.untuned,
                                        args.reuse, args.retune, args.train_domain, args.cta_mip_slices,
                                        train_cases=args.train_cases, slice_axis=args.slice_axis))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"label": args.label or (", ".join(args.overrides) or "preset"), "scale": args.scale,
              "train_domain": args.train_domain, "train_cases": args.train_cases or scale["train_cases"],
              "preset": preset, "overrides": overrides, "repeats": results,
              "spread": spread(results) if len(results) > 1 else None}
    text = json.dumps(report, indent=2, default=str)
    print(text)
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
