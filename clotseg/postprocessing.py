"""Post-processing chosen on the Validation volumes after training (nnU-Net style).

nnU-Net decides after training, on cases the weights never saw, whether
removing small or all-but-the-largest connected components helps. ClotSeg
does the same for the seven test-time choices of a sigmoid model: the
probability threshold, flip test-time augmentation, the minimum 3D
component size, the minimum peak probability of a component (hysteresis:
the threshold draws the outline, the peak decides what is a finding), the
largest distance of a component from contrast-filled lumen on CTA
(`clotseg.vessels`: a clot sits in an artery), the largest median CTA HU of
a component (a clot is a filling defect, not lumen; both searched only where
the volumes have a CTA in HU) and keep-largest-component. Each combination is scored by
the mean per-case Dice over every validation case, with the conventions of
`clotseg.evaluation.metrics` (a clot-free case scores 1 when nothing is
predicted and 0 for a false alarm, so false alarms on controls count); among
combinations that neither raise the false-positive components per case above
the plain choice (0.5, no TTA, no filtering) nor find more than FOUND_SLACK
of the validation clot cases fewer than it (a clot is found when a kept
component touches it), and whose size filter stays under a quarter of the
smallest validation clot (SIZE_MARGIN), the best mean Dice wins, ties going to the
plainer threshold, TTA, keep-largest, peak, lumen and vessel choice and to the largest size filter
under that cap (TIE_FILTER). A choice that config.py fixes (THRESHOLD = 0.5,
say) is not searched: the others are chosen given it, so testing never
combines a fixed threshold with a size filter chosen for another one. The
detection floor matters most for a weak model: without it, a high threshold
and a large minimum size can win on mean Dice by deleting every prediction of
the clot-free cases and of the hard clot cases alike. The slack lets keep-largest-component lose the odd clot that sits
beside a larger false alarm when that raises the mean Dice. The result is `<run>/postprocessing.json`,
which testing.py uses unless config.py sets a value.

Scoring a combination costs no relabelling: each (threshold, TTA) mask is
labelled once (26-connected), and every size, peak, lumen and vessel filter
is evaluated from the components' sizes, peak probabilities, median CTA HU,
distances to the vessels and overlap with the truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product

import numpy as np

from clotseg.helpers import component_peaks, label_components, slice_runs

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
# Below this many Validation cases with clot the choice is left at the plain
# default: on the 4 validation volumes of the demo, a 160-voxel filter that
# suited them deleted every clot of the test cases.
MIN_CLOT_CASES = 5
MIN_SIZES = (0, 3, 6, 10, 20, 40, 80, 160)
# Minimum peak probabilities (0 = off); only those above the threshold are
# tried. A low threshold outlines a found clot more fully, and a peak filter
# then drops the faint components such a threshold also lets through.
MIN_PEAKS = (0.0, 0.6, 0.7, 0.8, 0.9)
# Largest distances (mm) of a kept component from CTA lumen of at least
# clotseg.vessels.VESSEL_MIN_HU (0 = off): a clot touches or fills its artery,
# so its distance is about a voxel; a speck in the parenchyma lies farther.
VESSEL_DISTANCES_MM = (0.0, 2.0, 4.0)
# Largest median CTA HU of a kept component (0 = off). A thrombus on CTA keeps
# about its NCCT value, 45-75 HU, plus 0-30 HU where it is pervious (at most
# about 105 HU); opacified lumen is above 150 HU (../shared/reference/
# clinical.md). 130 HU lies between the two: a component brighter than that
# is a piece of patent artery or calcified wall (clotseg.vessels).
CTA_LUMEN_HU = (0.0, 130.0)
# (config.py holds it at 130 HU: on a development cohort of the first build's
# generator it cut FP components per case 0.14 -> 0.11 with no clot lost,
# where searching it changed nothing; docs/quality-rounds.md, eighteenth round.)
# A size filter may only remove components smaller than SIZE_MARGIN x the
# smallest validation clot (voxels). A filter just under the validation
# clots' sizes removes every false alarm there and still "finds" every clot,
# so it wins on a handful of validation cases, then deletes the smaller
# clots of new cases: on the demo scale's 6 validation clots of 120-540
# voxels a 160-voxel filter won, and test sensitivity fell to 0.34. A quarter,
# not a half: the smallest of 8-10 validation clots overstates the smallest
# clot of new cases (the first build's generator draws 5-80 mm^3), and the
# `cpu` preset's models kept 6-10-voxel filters that dropped some of them.
# Resampled on a development cohort of the first build's generator (never a
# test cohort; 10 `cpu`-preset models x 30 draws), 0.25 vs 0.5: clot Dice
# 0.727 -> 0.734, case sensitivity 0.890 -> 0.911, FP components per case
# 0.05 -> 0.07, controls without an alarm 0.95 -> 0.94; 4 demo-scale
# models: 0.669 -> 0.674, 0.837 -> 0.849, 0.04 -> 0.06, 0.98 -> 0.95. Six
# `cpu`-preset models re-tuned, on the unseen test cohorts: paired Dice
# -0.000 / +0.002 / +0.013 (three pairs), 0 / 1 / 1 more clots found per
# model. docs/quality-rounds.md, thirty-fifth round.
SIZE_MARGIN = 0.25
# A choice may find floor(FOUND_SLACK x the validation clot cases) fewer clots
# than the plain default (1 of 5-9, none of 1-4). With no slack at all,
# keep-largest-component was refused whenever one validation clot sat beside
# a larger false alarm. Resampled on a separate 40-case development cohort
# (never a test cohort; 6 demo-scale models x 60 draws of 8 tuning cases,
# scored on the other 32; bench/tuner_resampling.py, commands in
# bench/README.md): clot-case Dice 0.324 -> 0.327, FP components per case
# 1.38 -> 0.67, clot-free cases without an alarm 0.40 -> 0.48, case
# sensitivity 0.585 -> 0.554.
FOUND_SLACK = 0.2
# Among choices that tie on the validation cases (same mean Dice, same false
# positives, same clots found), "largest" keeps the largest size filter under
# the SIZE_MARGIN cap, "smallest" the smallest. A tie means the validation
# cases could not tell them apart, typically because their two or three
# controls had no small false alarm to remove, while new controls do (on the
# first build's cohort, a demo model's alarms on controls were 1-5 voxel
# specks that keep-largest kept). Resampled on the development cohorts (never
# a test cohort; bench/tuner_resampling.py, 60 draws of 8 tuning cases per
# model, scored on the other 32), largest vs smallest: standard phantom (4
# demo models) controls without an alarm 0.46 -> 0.56, FP components per case
# 0.61 -> 0.54, case sensitivity 0.565 -> 0.553, clot Dice 0.316 -> 0.314;
# first-build generator (2 models trained on it) controls 0.80 -> 0.83, FP
# 0.22 -> 0.19, sensitivity 0.870 -> 0.860, Dice 0.667 -> 0.665.
TIE_FILTER = "largest"
# Among choices that tie on the validation cases, "off" applies no vessel
# filter (MAX_VESSEL_DISTANCE_MM), "widest" the widest of VESSEL_DISTANCES_MM.
TIE_VESSEL = "off"
# Mean validation Dice within which choices count as tied (then the plainest
# wins, as above): 8 validation volumes cannot tell 0.005 apart, and the
# threshold the tuner chose swung between 0.3 and 0.7 across seeds of one
# setting. 0 = only exact ties. Resampled on the development cohort (2
# models x 30 draws), 0.005, 0.01 and 0.02 moved clot Dice by -0.001 to
# +0.002 and FP components per case from 0.11 to 0.12-0.14, with no trend;
# re-tuned at 0.01, the CPU-scale runs lost 0.014 [0.001, 0.037] (it mostly
# dropped the flip TTA, first in the order of plainness, and the threshold
# still swung). docs/quality-rounds.md, nineteenth round.
DICE_TOLERANCE = 0.0


@dataclass(frozen=True)
class PostProcessing:
    """The test-time choices for a sigmoid model (see the module docstring)."""

    threshold: float = 0.5
    tta_flips: bool = False
    min_component_voxels: int = 0
    keep_largest_component: bool = False
    min_component_peak: float = 0.0
    max_vessel_distance_mm: float = 0.0
    max_component_cta_hu: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT = PostProcessing()


def _case_components(prob: np.ndarray, truth: np.ndarray, threshold: float, slice_gaps=None,
                     vessels: tuple | None = None, reach_mm: float = max(VESSEL_DISTANCES_MM),
                     cta: np.ndarray | None = None) -> dict:
    """Component sizes, peak probabilities, truth overlaps, (with `vessels`
    = (vessel mask, spacing mm)) distances to the vessels (inf beyond
    `reach_mm`, the widest filter scored) and (with `cta`, the (h, w, D) CTA
    in HU) median CTA HU of one case's thresholded mask, labelled within each
    run of adjacent slices (`slice_gaps`, as testing.py's post-processing and
    scoring do)."""
    runs = slice_runs(prob.shape[-1], slice_gaps) if slice_gaps else None
    labels, n = label_components(prob > threshold, runs)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    overlap = np.bincount(labels[truth].ravel(), minlength=n + 1)[1:] if n else np.zeros(0, np.int64)
    peaks = component_peaks(labels, n, prob)
    distances = None
    if vessels is not None:
        from clotseg.vessels import component_distances

        distances = component_distances(labels, n, vessels[0], vessels[1], reach_mm)
    medians = None
    if cta is not None:
        from clotseg.vessels import component_medians

        medians = component_medians(labels, n, cta)
    return {"sizes": sizes, "overlap": overlap, "peaks": peaks, "distances": distances, "cta_medians": medians,
            "n_true": int(truth.sum())}


def _score(comp: dict, min_size: int, keep_largest: bool, min_peak: float = 0.0,
           max_vessel_mm: float = 0.0, max_cta_hu: float = 0.0) -> tuple[float, int, int]:
    """(Dice, false-positive components, clot found 0/1) of one case after a size, peak, vessel and lumen filter."""
    sizes, overlap = comp["sizes"], comp["overlap"]
    keep = sizes >= max(min_size, 1)
    if min_peak > 0:
        keep &= comp["peaks"] >= min_peak
    if max_vessel_mm > 0:
        keep &= comp["distances"] <= max_vessel_mm
    if max_cta_hu > 0:
        keep &= comp["cta_medians"] <= max_cta_hu
    if keep_largest and keep.any():
        largest = int(np.argmax(np.where(keep, sizes, -1)))
        keep = np.zeros_like(keep)
        keep[largest] = True
    n_pred = int(sizes[keep].sum())
    tp = int(overlap[keep].sum())
    n_true = comp["n_true"]
    fp_components = int(np.count_nonzero(keep & (overlap == 0)))
    found = int(n_true > 0 and tp > 0)
    if n_true == 0 and n_pred == 0:
        return 1.0, 0, 0
    return 2.0 * tp / (n_pred + n_true), fp_components, found


def tune(cases: list[tuple[list[np.ndarray], np.ndarray]], thresholds=THRESHOLDS, min_sizes=MIN_SIZES,
         min_clot_cases: int = MIN_CLOT_CASES, slice_gaps: list | None = None, min_peaks=MIN_PEAKS,
         fixed: dict | None = None, vessels: list | None = None, vessel_distances=VESSEL_DISTANCES_MM,
         ctas: list | None = None, cta_limits=CTA_LUMEN_HU) -> dict:
    """Choose the post-processing on labelled validation cases.

    Args:
        cases: per case (members, truth): members are the float (h, w, D)
            clot probabilities of the plain prediction followed, optionally,
            by the flip-TTA members (see clotseg.inference.predict_volume_members);
            truth is the (h, w, D) bool mask.
        slice_gaps: per case, its sidecar "slice_gaps" (or None), so that,
            as in testing.py, no component joins slices across a gap; None
            = no case has gaps.
        min_clot_cases: with fewer validation cases holding clot, the
            table is still computed but the plain default is chosen
            ("reason" says so).
        fixed: {PostProcessing field: value} that config.py sets: each is
            held at that value (not searched), the plain reference takes
            it too, and the rest is chosen given it.
        vessels: per case (vessel mask (h, w, D) bool, spacing mm or
            None), see `clotseg.vessels`; None = the volumes have no CTA
            in HU, and the vessel filter is not searched.
        ctas: per case the (h, w, D) CTA in HU (`clotseg.vessels.cta_volume`);
            None = no CTA in HU, and the lumen filter is not searched.
    Returns:
        {"chosen": PostProcessing dict, "reason", "validation": {mean_dice,
        fp_components_per_case, clots_found} of the chosen and of the
        default, "n_cases",
        "table": every combination's scores}.
    """
    if not cases:
        raise ValueError("no validation cases to tune the post-processing on")
    gaps = list(slice_gaps) if slice_gaps is not None else [None] * len(cases)
    if len(gaps) != len(cases):
        raise ValueError(f"slice_gaps has {len(gaps)} entries for {len(cases)} cases")
    with_tta = all(len(members) > 1 for members, _ in cases)
    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    unknown = set(fixed) - set(DEFAULT.as_dict())
    if unknown:
        raise ValueError(f"fixed: unknown post-processing choice(s) {sorted(unknown)}")
    if fixed.get("tta_flips") and not with_tta:
        raise ValueError("fixed: tta_flips needs the flip members of every case")
    if vessels is not None and len(vessels) != len(cases):
        raise ValueError(f"vessels has {len(vessels)} entries for {len(cases)} cases")
    if fixed.get("max_vessel_distance_mm") and vessels is None:
        raise ValueError("fixed: max_vessel_distance_mm needs the vessel mask of every case")
    if ctas is not None and len(ctas) != len(cases):
        raise ValueError(f"ctas has {len(ctas)} entries for {len(cases)} cases")
    if fixed.get("max_component_cta_hu") and ctas is None:
        raise ValueError("fixed: max_component_cta_hu needs the CTA of every case")
    vessels = list(vessels) if vessels is not None else [None] * len(cases)
    ctas = list(ctas) if ctas is not None else [None] * len(cases)
    tta_options = (False, True) if with_tta else (False,)
    grids = {"threshold": thresholds, "tta_flips": tta_options, "min_component_voxels": min_sizes,
             "keep_largest_component": (False, True), "min_component_peak": min_peaks,
             "max_vessel_distance_mm": vessel_distances if vessels[0] is not None else (0.0,),
             "max_component_cta_hu": cta_limits if ctas[0] is not None else (0.0,)}
    grids.update({k: (v,) for k, v in fixed.items()})
    plain = PostProcessing(**{**DEFAULT.as_dict(), **fixed})
    reach = max(grids["max_vessel_distance_mm"])
    lumen = max(grids["max_component_cta_hu"]) > 0
    table = []
    for tta, threshold in product(grids["tta_flips"], grids["threshold"]):
        comps = []
        for (members, truth), case_gaps, case_vessels, cta in zip(cases, gaps, vessels, ctas):
            prob = np.mean(members, axis=0) if tta else members[0]
            comps.append(_case_components(prob, np.asarray(truth, dtype=bool), threshold, case_gaps,
                                          case_vessels if reach > 0 else None, reach, cta if lumen else None))
        for keep_largest, min_size, peak, distance, cta_hu in product(
                grids["keep_largest_component"], grids["min_component_voxels"], grids["min_component_peak"],
                grids["max_vessel_distance_mm"], grids["max_component_cta_hu"]):
            if peak and peak <= threshold and "min_component_peak" not in fixed:
                continue                       # every component already peaks above the threshold
            scores = [_score(c, min_size, keep_largest, peak, distance, cta_hu) for c in comps]
            table.append({**PostProcessing(threshold, tta, min_size, keep_largest, float(peak),
                                           float(distance), float(cta_hu)).as_dict(),
                          "mean_dice": float(np.mean([s[0] for s in scores])),
                          "fp_components_per_case": float(np.mean([s[1] for s in scores])),
                          "clots_found": int(sum(s[2] for s in scores))})
    base = next(r for r in table if _choice(r) == plain)
    clot_sizes = [int(np.count_nonzero(truth)) for _, truth in cases if np.any(truth)]
    size_cap = SIZE_MARGIN * min(clot_sizes) if clot_sizes else 0.0
    n_clot = len(clot_sizes)
    slack = int(FOUND_SLACK * n_clot + 1e-9)
    allowed = [r for r in table if r["fp_components_per_case"] <= base["fp_components_per_case"] + 1e-12
               and r["clots_found"] >= base["clots_found"] - slack
               and ("min_component_voxels" in fixed or r["min_component_voxels"] <= size_cap)]

    sign = -1 if TIE_FILTER == "largest" else 1

    def simplicity(r):  # ties: no TTA, no keep-largest, no (or the lowest) peak filter, no lumen filter,
        # no (or the widest) vessel filter, largest (or smallest) size filter, threshold nearest 0.5
        distance = r["max_vessel_distance_mm"]
        vessel = -distance if TIE_VESSEL == "widest" else (distance > 0, -distance)
        return (r["tta_flips"], r["keep_largest_component"], r["min_component_peak"],
                r["max_component_cta_hu"] > 0, vessel, sign * r["min_component_voxels"],
                abs(r["threshold"] - 0.5))

    if n_clot < min_clot_cases:
        best = base
        reason = (f"only {n_clot} validation case(s) with clot (fewer than {min_clot_cases}): "
                  "too few to choose on, the plain default is kept")
    else:
        top = max(round(r["mean_dice"], 6) for r in allowed)
        tied = [r for r in allowed if round(r["mean_dice"], 6) >= top - DICE_TOLERANCE - 1e-9]
        best = min(tied, key=lambda r: (simplicity(r), -round(r["mean_dice"], 6)))
        reason = (f"best mean Dice on {len(cases)} validation cases ({n_clot} with clot) without more "
                  f"false-positive components or more than {slack} fewer clots found than the plain default, "
                  f"size filter at most {size_cap:g} voxels ({SIZE_MARGIN:g} x the smallest validation clot)")
    if fixed:
        reason += "; held as config.py sets them: " + ", ".join(f"{k} = {v}" for k, v in sorted(fixed.items()))
    return {"chosen": _choice(best).as_dict(), "reason": reason, "fixed": fixed,
            "validation": {"chosen": {k: best[k] for k in ("mean_dice", "fp_components_per_case", "clots_found")},
                           "default": {k: base[k] for k in ("mean_dice", "fp_components_per_case", "clots_found")}},
            "n_cases": len(cases), "table": table}


def _choice(row: dict) -> PostProcessing:
    """A table row's choices, each as its field's type."""
    return PostProcessing(**{name: type(value)(row[name]) for name, value in DEFAULT.as_dict().items()})


def fixed_by(settings) -> dict:
    """{choice: value} of the post-processing choices config.py sets (not None).

    The lumen filter reads each component's CTA in HU: for a cohort without
    a CTA modality in HU (`clotseg.vessels.available`) it is held off (0),
    so its default does nothing on, say, an NCCT-only hemorrhage cohort."""
    from clotseg.vessels import available

    fixed = {name: getattr(settings, name) for name in DEFAULT.as_dict() if getattr(settings, name) is not None}
    if fixed.get("max_component_cta_hu") and not available(settings.modalities, settings.windows_hu):
        fixed["max_component_cta_hu"] = 0.0
    return fixed


def resolve(settings, tuned: dict | None) -> PostProcessing:
    """The choices testing uses: a config.py value when set (not None), else
    the run's tuned value, else the default."""
    base = PostProcessing(**tuned["chosen"]) if tuned else DEFAULT
    return PostProcessing(**{**base.as_dict(), **fixed_by(settings)})
