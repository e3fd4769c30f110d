"""How well the post-processing tuner's choice carries over to new cases.

    python -m bench.tuner_resampling WORKDIR [WORKDIR ...] [--draws 60] [--dev DIR] [--dev-domain first-build]

WORKDIR is a `bench/quality.py --workdir` folder; the latest run of its
repeat0 is used. Each model predicts (plain + flip members) a separate
40-case development cohort of the standard phantom domain (or --dev-domain
first-build: the other generator; give it its own --dev) (seed 5000, the
demo scale's sizes; never a benchmark test cohort, seeds 2000+, 3000+ and 4000+),
written to --dev once and cached there with the predictions. Then, --draws
times per model: 8 random development cases play the Validation cohort the
tuner chooses on, and the other 32 score the choice. Rules compared:

  strict      the tuner without FOUND_SLACK (no choice may find fewer
              validation clots than the plain default)
  tuner       clotseg.postprocessing.tune with the vessel filter in its
              grid (MAX_VESSEL_DISTANCE_MM = None; the development cases'
              CTA >= 100 HU)
  tuner, ties to the largest filter
              the same with TIE_FILTER = "largest"
  tuner, ties to the vessel filter
              the same with TIE_VESSEL = "widest"
  tuner without the vessel filter
              as shipped (MAX_VESSEL_DISTANCE_MM = 0 held)
  tuner holding 4 mm
              the tuner with MAX_VESSEL_DISTANCE_MM = 4 held (config.py)
  plain       0.5, no TTA, no filter
  plain + KL  0.5, keep the largest component
  plain + 4 mm
              0.5, no TTA, only the vessel filter at 4 mm
  tuner with the lumen filter
              the tuner as shipped plus the lumen filter in its grid
              (MAX_COMPONENT_CTA_HU = None: off or 130 HU)
  tuner holding 130 HU
              the tuner as shipped with MAX_COMPONENT_CTA_HU = 130 held
  plain + 130 HU
              0.5, no TTA, only the lumen filter at 130 HU
  tuner holding 130 HU, ties within D
              the same as shipped, choices within D of the best mean
              validation Dice counted as tied (DICE_TOLERANCE = D)
  tuner holding 130 HU and peak P
              the same as shipped with MIN_COMPONENT_PEAK = P held too
              (a kept component must reach probability P somewhere)
  tuner holding 130 HU and TTA off
              the same as shipped with TTA_FLIPS = False held (no flip
              averaging, which can lower a weak detection under the threshold)
  tuner holding 130 HU and size 0
              the same as shipped with no size filter (MIN_COMPONENT_VOXELS = 0 held)
  tuner holding 130 HU, ties to the smallest filter
              the same as shipped with TIE_FILTER = "smallest"
  tuner holding 130 HU, size margin M
              the same as shipped with SIZE_MARGIN = M (the size filter at
              most M x the smallest validation clot; shipped 0.25, 0.5
              before the thirty-fifth round)
  tuner holding 130 HU, no found slack
              the same as shipped with FOUND_SLACK = 0: no choice may find
              fewer validation clots than the plain default
  tuner holding 130 HU, thresholds from 0.1
              the same as shipped with 0.1 and 0.2 added to its threshold
              grid (THRESHOLDS starts at 0.3, and the `cpu` preset's models
              mostly chose 0.3: the grid's edge)

--rules RULE [RULE ...] compares only those (each rule costs one tuning per draw).

Prints JSON and a Markdown table: clot-case Dice, FP components per case,
case sensitivity and the share of clot-free cases without an alarm, pooled
over models and draws (draws whose 8 cases hold fewer than MIN_CLOT_CASES
clot cases are skipped, as the tuner would keep the default there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from unittest import mock

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.quality import latest_run  # noqa: E402

DEV_SEED, DEV_CASES, N_TUNE = 5000, 40, 8
RULES = ("strict", "tuner", "tuner, ties to the largest filter", "tuner, ties to the vessel filter",
         "tuner without the vessel filter",
         "tuner holding 4 mm", "plain", "plain + KL", "plain + 4 mm",
         "tuner with the lumen filter", "tuner holding 130 HU", "plain + 130 HU",
         "tuner holding 130 HU, ties within 0.005", "tuner holding 130 HU, ties within 0.01",
         "tuner holding 130 HU, ties within 0.02",
         "tuner holding 130 HU and peak 0.6", "tuner holding 130 HU and peak 0.7",
         "tuner holding 130 HU and peak 0.8", "tuner holding 130 HU and TTA off",
         "tuner holding 130 HU and size 0", "tuner holding 130 HU, ties to the smallest filter",
         "tuner holding 130 HU, size margin 0.5", "tuner holding 130 HU, no found slack",
         "tuner holding 130 HU, thresholds from 0.1")
LOW_THRESHOLDS = (0.1, 0.2)
LUMEN_HU = 130.0


def _dev_cohort(dev: Path, scale: str, domain: str = "standard") -> list[str]:
    from bench.quality import SCALES, _write_phantom

    if not (dev / "masks").is_dir():
        _write_phantom(dev / "volumes", dev / "masks", DEV_CASES, DEV_SEED, SCALES[scale], domain)
    return [f"CS{i}" for i in range(1, DEV_CASES + 1)]


def _members(workdir: Path, dev: Path, cases: list[str]) -> list[np.ndarray]:
    """(M, H, W, D) float32 members per development case, cached as float16."""
    from clotseg.io import atomic_save_npy, load_npy
    from clotseg.layout import load_run_settings

    run = latest_run(workdir / "repeat0")
    if run is None:
        raise FileNotFoundError(f"{workdir}: no finished bench run (repeat0/Trainings/*/run.json)")
    cache = dev / "predictions" / f"{workdir.name}-{run.name}"
    if not all((cache / f"{c}.npy").is_file() for c in cases):
        from clotseg.inference import predict_volume_members
        from clotseg.stages.evaluate import load_model   # safe mode, the run's best model

        settings = load_run_settings(run, run.parent.parent)
        model = load_model(run)
        windows = [settings.windows_hu[m] for m in settings.modalities]
        cache.mkdir(parents=True, exist_ok=True)
        for c in cases:
            vols = [load_npy(dev / "volumes" / settings.modality_patterns[m].replace("<ID>", c[2:]))
                    for m in settings.modalities]
            members = predict_volume_members(model, vols, windows, settings.input_shape[:2], batch_size=64,
                                             tta_flips=True, context_slices=settings.context_slices,
                                             symmetry=settings.symmetry_channels)
            # atomic: a killed run never leaves a half-written cache file that looks finished
            atomic_save_npy(cache / f"{c}.npy", np.stack([m[..., 0] for m in members]).astype(np.float16))
    return [load_npy(cache / f"{c}.npy").astype(np.float32) for c in cases]


def _cta_inputs(dev: Path, cases: list[str]) -> tuple[list | None, list | None]:
    """What the vessel and lumen rules read from the development cases' CTA,
    each CTA file read once: per case (vessel mask (`clotseg.vessels.vessel_mask`),
    spacing mm from its sidecar) and the CTA in whole HU (`cta_volume`, as the
    tuner and testing read it); (None, None) when the cohort has no CTA volumes."""
    from clotseg.cohort import read_sidecar
    from clotseg.io import load_npy
    from clotseg.settings import Settings
    from clotseg.vessels import cta_volume, vessel_mask

    pattern = Settings().modality_patterns["CTA"]
    paths = [dev / "volumes" / pattern.replace("<ID>", c[2:]) for c in cases]
    if not all(p.is_file() for p in paths):
        return None, None
    near, ctas = [], []
    for c, path in zip(cases, paths):
        cta = load_npy(path)
        side = dev / "volumes" / f"{c}.json"
        near.append((vessel_mask([cta], ["CTA"]), read_sidecar(side, c).get("spacing_mm") if side.is_file() else None))
        ctas.append(cta_volume([cta], ["CTA"]))
    return near, ctas


def _thresholds(rule: str) -> tuple:
    """The threshold grid `rule` tunes over: the shipped THRESHOLDS, with
    LOW_THRESHOLDS in front for the rule ", thresholds from 0.1"."""
    from clotseg import postprocessing as pp

    return LOW_THRESHOLDS + tuple(pp.THRESHOLDS) if rule.endswith(", thresholds from 0.1") else tuple(pp.THRESHOLDS)


def _choose(rule: str, tune_cases, near=None, ctas=None) -> dict:
    """The choice of `rule` on `tune_cases`; `near`: their (vessel mask,
    spacing) or None (no CTA: the vessel rules then fall back to no filter);
    `ctas`: their CTA in HU or None (the lumen rules likewise)."""
    from clotseg import postprocessing as pp

    if rule == "tuner with the lumen filter":
        return pp.tune(tune_cases, ctas=ctas)["chosen"]
    if rule.startswith("tuner holding 130 HU"):
        # as shipped, ", ties within D" (DICE_TOLERANCE = D) or " and peak P" (MIN_COMPONENT_PEAK = P held too)
        tolerance = float(rule.rsplit(" ", 1)[1]) if ", ties within " in rule else pp.DICE_TOLERANCE
        held = {"max_component_cta_hu": LUMEN_HU} if ctas is not None else {}
        if " and peak " in rule:
            held["min_component_peak"] = float(rule.rsplit(" ", 1)[1])
        if rule.endswith(" and TTA off"):
            held["tta_flips"] = False
        if rule.endswith(" and size 0"):
            held["min_component_voxels"] = 0
        slack = 0.0 if rule.endswith(", no found slack") else pp.FOUND_SLACK
        ties = "smallest" if rule.endswith(", ties to the smallest filter") else pp.TIE_FILTER
        margin = float(rule.rsplit(" ", 1)[1]) if ", size margin " in rule else pp.SIZE_MARGIN
        with mock.patch.object(pp, "DICE_TOLERANCE", tolerance), mock.patch.object(pp, "FOUND_SLACK", slack), \
                mock.patch.object(pp, "TIE_FILTER", ties), mock.patch.object(pp, "SIZE_MARGIN", margin):
            return pp.tune(tune_cases, thresholds=_thresholds(rule), ctas=ctas, fixed=held)["chosen"]
    if rule == "plain + 130 HU":
        return pp.PostProcessing(max_component_cta_hu=LUMEN_HU if ctas is not None else 0.0).as_dict()

    if rule == "plain":
        return pp.DEFAULT.as_dict()
    if rule == "plain + KL":
        return pp.PostProcessing(keep_largest_component=True).as_dict()
    if rule == "plain + 4 mm":
        return pp.PostProcessing(max_vessel_distance_mm=4.0 if near is not None else 0.0).as_dict()
    if rule == "tuner without the vessel filter":
        return pp.tune(tune_cases)["chosen"]
    if rule == "tuner holding 4 mm" and near is not None:
        return pp.tune(tune_cases, vessels=near, fixed={"max_vessel_distance_mm": 4.0})["chosen"]
    if rule == "strict":
        with mock.patch.object(pp, "FOUND_SLACK", 0.0):
            return pp.tune(tune_cases, vessels=near)["chosen"]
    if rule == "tuner, ties to the largest filter":
        with mock.patch.object(pp, "TIE_FILTER", "largest"):
            return pp.tune(tune_cases, vessels=near)["chosen"]
    if rule == "tuner, ties to the vessel filter":
        with mock.patch.object(pp, "TIE_VESSEL", "widest"):
            return pp.tune(tune_cases, vessels=near)["chosen"]
    return pp.tune(tune_cases, vessels=near)["chosen"]


def resample(members: list[np.ndarray], truths: list[np.ndarray], draws: int, seed: int = 0,
             near: list | None = None, ctas: list | None = None, rules=RULES) -> dict:
    """{rule: [(clot Dice, FP components per case, sensitivity, control specificity), ...]} per draw.
    `near`: per case (vessel mask, spacing mm), or None without a CTA; `ctas`:
    per case the CTA in HU, or None."""
    from clotseg import postprocessing as pp

    n = len(truths)
    vessels = near if near is not None else [None] * n
    cta_list = ctas if ctas is not None else [None] * n
    grid = sorted({t for rule in rules for t in _thresholds(rule)})   # every threshold a rule may choose
    comps = {(tta, t): [pp._case_components(np.mean(m, 0) if tta else m[0], truth, t, vessels=v, cta=c)
                        for m, truth, v, c in zip(members, truths, vessels, cta_list)]
             for tta in (False, True) for t in grid}
    rng = np.random.default_rng(seed)
    out = {rule: [] for rule in rules}
    for _ in range(draws):
        order = rng.permutation(n)
        tune_idx, score_idx = order[:N_TUNE], order[N_TUNE:]
        if sum(truths[i].any() for i in tune_idx) < pp.MIN_CLOT_CASES:
            continue
        tune_cases = [(list(members[i]), truths[i]) for i in tune_idx]
        tune_near = [near[i] for i in tune_idx] if near is not None else None
        tune_ctas = [ctas[i] for i in tune_idx] if ctas is not None else None
        for rule in rules:
            ch = _choose(rule, tune_cases, tune_near, tune_ctas)
            scores = [pp._score(comps[(ch["tta_flips"], ch["threshold"])][i], ch["min_component_voxels"],
                                ch["keep_largest_component"], ch["min_component_peak"],
                                ch["max_vessel_distance_mm"], ch["max_component_cta_hu"]) for i in score_idx]
            clot = [s for s, i in zip(scores, score_idx) if truths[i].any()]
            ctrl = [s for s, i in zip(scores, score_idx) if not truths[i].any()]
            out[rule].append((float(np.mean([s[0] for s in clot])), float(np.mean([s[1] for s in scores])),
                              float(np.mean([s[2] for s in clot])),
                              float(np.mean([s[0] for s in ctrl])) if ctrl else float("nan")))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", type=Path)
    parser.add_argument("--draws", type=int, default=60)
    parser.add_argument("--dev", type=Path, default=Path("/tmp/clotseg-dev-cohort"))
    parser.add_argument("--scale", default="demo", help="bench/quality.py scale whose case sizes to use")
    parser.add_argument("--dev-domain", default="standard",
                        help="generator of the development cohort (bench/quality.py TEST_DOMAINS; use its own --dev)")
    parser.add_argument("--rules", nargs="+", default=list(RULES), metavar="RULE",
                        help="compare only these rules (default: all)")
    args = parser.parse_args(argv)
    unknown = [r for r in args.rules if r not in RULES]
    if unknown:
        parser.exit(2, f"bench.tuner_resampling: --rules: unknown {unknown[0]!r}; choose from {', '.join(RULES)}\n")
    from clotseg.io import load_npy

    from bench.quality import TEST_DOMAINS

    if args.dev_domain not in TEST_DOMAINS:
        parser.exit(2, f"bench.tuner_resampling: --dev-domain: unknown {args.dev_domain}; "
                       f"choose from {', '.join(TEST_DOMAINS)}\n")
    cases = _dev_cohort(args.dev, args.scale, args.dev_domain)
    truths = [load_npy(args.dev / "masks" / f"{c}_seg_corrected_binary.npy") > 0 for c in cases]
    near, ctas = _cta_inputs(args.dev, cases)
    pooled = {rule: [] for rule in args.rules}
    for workdir in args.workdirs:
        try:  # a folder without a finished run is a user's mistake: one line, exit status 2
            members = _members(workdir, args.dev, cases)
        except FileNotFoundError as exc:
            parser.exit(2, f"bench.tuner_resampling: {exc}\n")
        for rule, rows in resample(members, truths, args.draws, near=near, ctas=ctas,
                                      rules=args.rules).items():
            pooled[rule] += rows
    keys = ("clot_dice", "fp_components_per_case", "case_sensitivity", "controls_without_alarm")
    report = {"models": [str(w) for w in args.workdirs], "draws_per_model": args.draws,
              "dev_domain": args.dev_domain,
              "rules": {rule: {**dict(zip(keys, np.nanmean(np.array(rows), axis=0).round(4).tolist())),
                               "n": len(rows)} for rule, rows in pooled.items() if rows}}
    print(json.dumps(report, indent=2))
    print("\n| rule | clot-case Dice | FP components/case | case sensitivity | controls without alarm | draws |")
    print("| --- | --- | --- | --- | --- | --- |")
    for rule, r in report["rules"].items():
        print(f"| {rule} | {r['clot_dice']:.3f} | {r['fp_components_per_case']:.2f} | {r['case_sensitivity']:.3f} "
              f"| {r['controls_without_alarm']:.2f} | {r['n']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
