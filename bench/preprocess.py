"""PREPROCESS benchmark: does a raw cohort train as well as the same cohort prepared?

    python -m bench.preprocess --scale cpu [--cases 60] [--seed 7] [--set NAME=VALUE ...]
                               [--workdir DIR] [--out bench/results/preprocess_cpu.json]

Writes one phantom cohort twice with the same seed (so the same cases,
anatomy and clots) into two project folders of a work folder:

  prepared/  `clotseg.phantom.write_cohort` as always (NCCT registered up to
             the phantom's small residual, each case at its own spacing, the
             field of view of the model input); PREPROCESS = False.
  raw/       the same cases with `unregistered=True`: the NCCT moved by a
             known rotation (2-10 degrees) and shift and on its own grid
             (another spacing), the CTA and mask in a larger field of view;
             PREPROCESS = True (TARGET_SPACING_MM, ROI_SIZE_MM from the scale).

Both run training.py's code path (prepare_data, run_training) with the same
settings and seed, so the split puts the same cases in the same cohorts,
and testing.py's (run_evaluation on the run's Testing cohort). It prints one
JSON object and Markdown tables:

  - registration error per raw case against the phantom's known transform:
    residual rotation (degrees) and displacement over the head (mm, max and
    mean), and how many registrations were flagged;
  - clot volume error of the resampling (prepared mask vs original mask, %)
    and how much of the clot the crop kept;
  - Dice on the Testing clot cases of both runs (mean, median, bootstrap 95%
    CI), for the raw run also after putting its predictions back on the
    original grid (`clotseg.preprocessing.roi.to_original_grid`), where the
    cases are voxel for voxel those of the prepared run; and the paired
    difference raw - prepared with its bootstrap 95% CI over the same cases:
    "trains as well, within the noise" when that CI holds 0.

Scales: "cpu" (128 px, the cpu preset, at most 20 minutes of training per
project), "gpu" (256 px, the gpu preset, at most 5 minutes per project on one
big GPU), "tiny" (seconds; plumbing only, the figures mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
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

import numpy as np  # noqa: E402

SCALES = {
    "cpu": {"preset": "cpu", "cases": 60, "in_plane": (96, 128), "slices": (20, 48), "budget_minutes": 20.0,
            "overrides": {"TARGET_SPACING_MM": (0.5, 0.5, 1.0), "ROI_SIZE_MM": (64.0, 64.0, 80.0)}},
    "gpu": {"preset": "gpu", "cases": 200, "in_plane": (192, 256), "slices": (24, 64), "budget_minutes": 5.0,
            "overrides": {"TARGET_SPACING_MM": (0.5, 0.5, 1.0), "ROI_SIZE_MM": (128.0, 128.0, 80.0)}},
    "tiny": {"preset": None, "cases": 8, "in_plane": (48, 56), "slices": (14, 18), "budget_minutes": 1.0,
             "overrides": {"INPUT_SHAPE": (64, 64, 2), "BASE_FILTERS": 4, "DEPTH": 2, "EPOCHS": 1,
                           "TARGET_SAMPLE_SIZE_AUG_TRAIN": 16, "TARGET_SAMPLE_SIZE_AUG_VAL": 8, "BATCH_SIZE": 8,
                           "NUM_WORKERS": 1, "BOOTSTRAP_RESAMPLES": 100, "TARGET_SPACING_MM": (0.5, 0.5, 1.0),
                           "ROI_SIZE_MM": (32.0, 32.0, 40.0)}},
}
CLOT_FREE_FRACTION = 0.15
N_BOOT = 2000


# one --set parser and one stderr log for both benchmarks
from bench.quality import log, parse_overrides  # noqa: E402
from bench.compare import read_metrics  # noqa: E402


def _settings(project: Path, preset, values: dict, preprocess: bool, budget: float):
    from clotseg.settings import Settings

    base = Settings.from_file(ROOT / "config.py", preset=preset)
    merged = {**base.to_dict(), **values, "PRESET": None, "PREPROCESS": preprocess}
    settings = Settings.from_dict(merged, root=project)
    if settings.max_training_minutes is None:
        settings = settings.replace(max_training_minutes=budget)
    return settings


def _stats(values: list[float], rng) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "mean": None, "median": None, "ci": [None, None]}
    boot = rng.choice(v, size=(N_BOOT, v.size), replace=True).mean(axis=1)
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
            "ci": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}


def _train_and_test(settings, label: str) -> tuple[Path, dict, dict]:
    from clotseg.io import read_json
    from clotseg.pipeline import prepare_data
    from clotseg.stages.evaluate import run_evaluation
    from clotseg.stages.train import run_training

    t0 = time.perf_counter()
    data = prepare_data(settings, log=log, demo_if_empty=False)
    t_data = time.perf_counter() - t0
    run = run_training(data["settings"], log=log)
    run_evaluation(settings, run_name=run.name, log=log)
    record = read_json(run / "run.json")
    return run, read_metrics(run / "Testing"), {"data_seconds": round(t_data, 1),
                                           "training_seconds": record.get("training_seconds"),
                                           "epochs_done": record.get("epochs_done"),
                                           "best_val_dice": record.get("best_val_dice"), "label": label}


def registration_errors(raw_settings) -> dict:
    """Per raw case: the registration against the phantom's truth, the volume error and the crop."""
    from clotseg.io import load_npy, read_json
    from clotseg.layout import preprocessed_inputs
    from clotseg.preprocessing.geometry import Grid, transform_error

    prepared = preprocessed_inputs(raw_settings)
    out = {}
    for side_path in sorted(prepared.volume_path.glob("*.json"), key=lambda p: int(p.stem[2:])):
        cid = side_path.stem
        side = read_json(side_path)
        raw_side = read_json(raw_settings.volume_path / f"{cid}.json")
        pre = side["preprocess"]
        reg = pre["registration"]["NCCT"]
        cta = load_npy(raw_settings.volume_path / f"{cid}_CTA_Binary.npy", mmap=True)
        grid = Grid.from_affine(cta.shape, raw_side["affines"]["CTA"])
        head = np.argwhere(np.asarray(cta) > -400.0)
        pts = grid.to_world(head[:: max(1, len(head) // 20000)])
        err = transform_error(np.asarray(reg["matrix"]), np.asarray(raw_side["unregistered"]["ncct_from_cta"]), pts)
        vol = pre["mask_volume_mm3"]
        row = {"true_rotation_deg": raw_side["unregistered"]["rotation_deg"],
               "rotation_error_deg": round(err["rotation_deg"], 4), "max_error_mm": round(err["max_mm"], 4),
               "mean_error_mm": round(err["mean_mm"], 4), "flagged": reg["flagged"],
               "skull_dice": [reg["skull_dice_before"], reg["skull_dice_after"]],
               "spacing_mm": {"CTA": raw_side["modality_spacing_mm"]["CTA"],
                              "NCCT": raw_side["modality_spacing_mm"]["NCCT"]}}
        if vol.get("original"):
            row["volume_error_pct"] = round(100.0 * (vol["resampled"] - vol["original"]) / vol["original"], 3)
            row["clot_kept_pct"] = round(100.0 * vol["cropped"] / vol["resampled"], 3) if vol["resampled"] else None
        out[cid] = row
    return out


def dice_on_original_grid(raw_settings, run: Path, case_ids: list[str]) -> dict:
    """Dice of the raw run's predictions put back on the original CTA grid, per case."""
    from clotseg.io import load_npy, read_json
    from clotseg.layout import preprocessed_inputs
    from clotseg.preprocessing.roi import to_original_grid

    prepared = preprocessed_inputs(raw_settings)
    out = {}
    for cid in case_ids:
        pre = read_json(prepared.volume_path / f"{cid}.json")["preprocess"]
        pred = to_original_grid(load_npy(run / "Testing" / "predictions" / f"{cid}_pred.npy"), pre)
        truth = load_npy(raw_settings.mask_path / f"{cid}_seg_corrected_binary.npy") > 0
        p = pred > 0
        denom = int(p.sum()) + int(truth.sum())
        out[cid] = 1.0 if denom == 0 else 2.0 * int((p & truth).sum()) / denom
    return out


def run(scale_name: str, cases: int | None, seed: int, overrides: dict, workdir: Path, preset=None) -> dict:
    from clotseg.phantom import write_cohort

    scale = SCALES[scale_name]
    n = cases or scale["cases"]
    values = {**scale["overrides"], **overrides}
    preset = preset if preset is not None else scale["preset"]
    projects = {}
    for name, unregistered in (("prepared", False), ("raw", True)):
        project = workdir / name
        if project.exists():
            shutil.rmtree(project)
        settings = _settings(project, preset, values, unregistered, scale["budget_minutes"])
        log(f"[bench] writing the {name} cohort ({n} cases, seed {seed}) in {project}")
        write_cohort(settings.volume_path, settings.mask_path, n, seed=seed, in_plane=scale["in_plane"],
                     slices=scale["slices"], clot_free_fraction=CLOT_FREE_FRACTION, progress=False,
                     unregistered=unregistered)
        projects[name] = settings
    results = {}
    for name, settings in projects.items():
        log(f"[bench] {name}: training and testing")
        results[name] = _train_and_test(settings, name)
    (run_p, m_p, info_p), (run_r, m_r, info_r) = results["prepared"], results["raw"]
    clot_cases = [c for c, row in m_p.items() if row.get("case_type") in ("detected", "missed")]
    assert sorted(m_p) == sorted(m_r), "the two runs tested different cases"
    back = dice_on_original_grid(projects["raw"], run_r, sorted(m_r))
    regs = registration_errors(projects["raw"])
    rng = np.random.default_rng(0)
    dice_p = [float(m_p[c]["dice"]) for c in clot_cases]
    dice_r = [float(m_r[c]["dice"]) for c in clot_cases]
    dice_b = [back[c] for c in clot_cases]
    diff = [b - a for a, b in zip(dice_p, dice_b)]
    clot_regs = [r for r in regs.values() if "volume_error_pct" in r]
    report = {
        "scale": scale_name, "cases": n, "seed": seed, "overrides": overrides, "preset": preset,
        "runs": {"prepared": {**info_p, "run": str(run_p)}, "raw": {**info_r, "run": str(run_r)}},
        "test_clot_cases": clot_cases,
        "dice": {"prepared": _stats(dice_p, rng), "raw_preprocessed_grid": _stats(dice_r, rng),
                 "raw_original_grid": _stats(dice_b, rng), "difference_raw_minus_prepared": _stats(diff, rng)},
        "registration": {
            "n": len(regs), "flagged": sorted(c for c, r in regs.items() if r["flagged"]),
            "rotation_error_deg": {"mean": float(np.mean([r["rotation_error_deg"] for r in regs.values()])),
                                   "max": float(np.max([r["rotation_error_deg"] for r in regs.values()]))},
            "max_error_mm": {"mean": float(np.mean([r["max_error_mm"] for r in regs.values()])),
                             "max": float(np.max([r["max_error_mm"] for r in regs.values()]))},
            "within_1mm_1deg": int(sum(r["max_error_mm"] <= 1.0 and r["rotation_error_deg"] <= 1.0
                                       for r in regs.values())),
        },
        "volume": {
            "abs_error_pct": {"mean": float(np.mean([abs(r["volume_error_pct"]) for r in clot_regs])),
                              "max": float(np.max([abs(r["volume_error_pct"]) for r in clot_regs]))}
            if clot_regs else None,
            "clot_kept_pct_min": min((r["clot_kept_pct"] for r in clot_regs if r["clot_kept_pct"] is not None),
                                     default=None),
        },
        "per_case": {c: {**regs.get(c, {}), "dice_prepared": float(m_p[c]["dice"]) if c in m_p else None,
                         "dice_raw": float(m_r[c]["dice"]) if c in m_r else None, "dice_raw_original_grid": back.get(c)}
                     for c in regs},
    }
    return report


def markdown(report: dict) -> str:
    def f(v, d=3):
        return "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))

    d, reg, vol = report["dice"], report["registration"], report["volume"]
    lines = [f"### PREPROCESS benchmark (scale {report['scale']}, {report['cases']} cases, seed {report['seed']}, "
             f"overrides {report['overrides'] or 'none'})", "",
             "| | value |", "| --- | --- |",
             f"| registrations within 1 mm and 1 degree | {reg['within_1mm_1deg']} / {reg['n']} |",
             f"| rotation error, mean / max | {f(reg['rotation_error_deg']['mean'], 2)} / "
             f"{f(reg['rotation_error_deg']['max'], 2)} degrees |",
             f"| displacement error over the head (max per case), mean / max | {f(reg['max_error_mm']['mean'], 2)} / "
             f"{f(reg['max_error_mm']['max'], 2)} mm |",
             f"| flagged registrations | {len(reg['flagged'])} {reg['flagged'] or ''} |"]
    if vol["abs_error_pct"]:
        lines += [f"| clot volume error of the resampling, mean / max abs | {f(vol['abs_error_pct']['mean'], 2)} / "
                  f"{f(vol['abs_error_pct']['max'], 2)} % |",
                  f"| clot kept by the crop, worst case | {f(vol['clot_kept_pct_min'], 1)} % |"]
    lines += ["", "| Testing clot cases | n | Dice mean [95% CI] | median |", "| --- | --- | --- | --- |"]
    for key, name in (("prepared", "prepared cohort"), ("raw_preprocessed_grid", "raw + PREPROCESS (its grid)"),
                      ("raw_original_grid", "raw + PREPROCESS, back on the original grid"),
                      ("difference_raw_minus_prepared", "difference (original grid - prepared), paired")):
        s = d[key]
        lines.append(f"| {name} | {s['n']} | {f(s['mean'])} [{f(s['ci'][0])}, {f(s['ci'][1])}] | {f(s['median'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--cases", type=int, default=None, help="cohort size (default: the scale's)")
    parser.add_argument("--seed", type=int, default=7, help="phantom seed of both cohorts (default 7)")
    parser.add_argument("--preset", default=None, help="preset of config.py (default: the scale's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="override a setting in both projects, e.g. --set EPOCHS=4 (repeatable)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the two projects here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clotseg-preprocess-"))
    try:
        with contextlib.redirect_stdout(sys.stderr):      # Keras bars: keep stdout for the JSON and the table
            report = run(args.scale, args.cases, args.seed, parse_overrides(args.overrides), workdir, args.preset)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2, default=str))
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
