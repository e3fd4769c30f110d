"""Post-processing tuned on the Validation volumes (clotseg.postprocessing):
threshold, flip TTA, minimum 3D component size, keep-largest; and how
testing resolves config.py overrides against the tuned choice."""

import numpy as np
import pytest

from clotseg.evaluation.metrics import case_metrics
from clotseg.inference import postprocess, to_mask
from clotseg.postprocessing import (DEFAULT, MIN_CLOT_CASES, MIN_PEAKS, MIN_SIZES, SIZE_MARGIN, THRESHOLDS,
                                    VESSEL_DISTANCES_MM, PostProcessing, resolve, tune)
from tests.conftest import tiny_settings

SHAPE = (24, 24, 10)


def _empty():
    return np.zeros(SHAPE, np.float32), np.zeros(SHAPE, bool)


def _box(arr, r, c, z, size, value=True):
    dr, dc, dz = size
    arr[r:r + dr, c:c + dc, z:z + dz] = value


def _clot_case(prob_value=0.9, blob=None, blob_value=0.8):
    """A 3x3x3 clot predicted at `prob_value`; optionally a spurious blob
    (size tuple) far from it at `blob_value`."""
    prob, truth = _empty()
    _box(truth, 4, 4, 2, (3, 3, 3))
    _box(prob, 4, 4, 2, (3, 3, 3), prob_value)
    if blob is not None:
        _box(prob, 16, 16, 6, blob, blob_value)
    return prob, truth


def _chosen(result) -> PostProcessing:
    return PostProcessing(**result["chosen"])


def _row(result, post: PostProcessing) -> dict:
    """The tuner's table row of the choices `post` (found as the tuner finds its plain row)."""
    from clotseg.postprocessing import _choice

    return next(r for r in result["table"] if _choice(r) == post)


def _n_rows(thresholds, min_sizes) -> int:
    """Table rows per TTA choice: keep-largest x size filters x, per threshold,
    no peak filter and each MIN_PEAKS value above that threshold."""
    return 2 * len(min_sizes) * sum(1 + sum(p > t for p in MIN_PEAKS if p) for t in thresholds)


def test_min_size_removes_a_small_spurious_blob():
    cases = [([_clot_case(blob=(2, 2, 1))[0]], _clot_case()[1]),      # 4-voxel false positive
             ([_clot_case(blob=(1, 2, 2))[0]], _clot_case()[1]),
             ([_clot_case()[0]], _clot_case()[1])]
    result = tune(cases, min_clot_cases=1)
    chosen = _chosen(result)
    # a filter that removes the 4-voxel blobs but keeps the 27-voxel clot
    assert 4 < chosen.min_component_voxels <= 27
    # of the filters that work equally well, the largest under SIZE_MARGIN x the 27-voxel clot (TIE_FILTER)
    assert chosen.min_component_voxels == max(m for m in MIN_SIZES if 4 < m <= SIZE_MARGIN * 27)
    assert chosen.keep_largest_component is False and chosen.tta_flips is False
    assert chosen.threshold == 0.5          # every threshold does as well: the nearest to 0.5 wins
    val = result["validation"]
    assert val["chosen"]["mean_dice"] == pytest.approx(1.0)
    assert val["default"]["mean_dice"] == pytest.approx((2 * 2 * 27 / (27 + 31) + 1) / 3)
    assert val["chosen"]["mean_dice"] > val["default"]["mean_dice"]
    assert val["chosen"]["fp_components_per_case"] == 0.0
    assert val["default"]["fp_components_per_case"] == pytest.approx(2 / 3)
    assert result["n_cases"] == 3


def test_a_faint_false_alarm_on_a_clot_free_case_raises_the_threshold():
    clot = _clot_case(prob_value=0.9)
    control_prob, control_truth = _empty()
    _box(control_prob, 10, 10, 3, (4, 4, 4), 0.55)    # 64 voxels: no size filter removes it without the clot
    result = tune([([clot[0]], clot[1]), ([control_prob], control_truth)], min_clot_cases=1)
    chosen = _chosen(result)
    assert chosen.threshold > 0.55
    assert chosen.threshold == min(t for t in THRESHOLDS if t > 0.55)
    # the size filters tie here; the largest under SIZE_MARGIN x the 27-voxel clot is kept (TIE_FILTER)
    assert chosen.min_component_voxels == max(m for m in MIN_SIZES if m <= SIZE_MARGIN * 27)
    assert not chosen.keep_largest_component
    val = result["validation"]
    assert val["default"]["mean_dice"] == pytest.approx(0.5)      # the control scores 0 for its false alarm
    assert val["chosen"]["mean_dice"] == pytest.approx(1.0)
    assert val["chosen"]["fp_components_per_case"] == 0.0


def test_a_dice_gain_that_adds_false_positives_is_refused():
    """Lowering the threshold to 0.3 recovers the faint half of a clot (mean
    Dice 0.83 -> 0.88) but also lights up a 40-voxel false positive: not allowed."""
    prob1, truth1 = _empty()
    _box(truth1, 2, 2, 1, (4, 4, 4))               # 64-voxel clot ...
    _box(prob1, 2, 2, 1, (4, 4, 2), 0.9)           # ... half of it confident
    _box(prob1, 2, 2, 3, (4, 4, 2), 0.35)          # ... half of it faint
    _box(prob1, 15, 15, 5, (5, 4, 2), 0.35)        # a faint 40-voxel false positive far away
    prob2, truth2 = _empty()                        # two separate 30-voxel clots (keep-largest would lose one)
    _box(truth2, 2, 2, 1, (5, 3, 2))
    _box(truth2, 15, 15, 6, (5, 3, 2))
    prob2[truth2] = 0.9
    # without the peak filter (which would drop that faint false positive: see the next test)
    result = tune([([prob1], truth1), ([prob2], truth2)], min_clot_cases=1, min_peaks=(0.0,))
    table = result["table"]
    best_unconstrained = max(table, key=lambda r: r["mean_dice"])
    base = next(r for r in table if PostProcessing(r["threshold"], r["tta_flips"], r["min_component_voxels"],
                                                   r["keep_largest_component"]) == DEFAULT)
    assert best_unconstrained["mean_dice"] > base["mean_dice"] + 0.03
    assert best_unconstrained["fp_components_per_case"] > base["fp_components_per_case"]
    chosen = result["validation"]["chosen"]
    assert chosen["fp_components_per_case"] <= base["fp_components_per_case"]
    assert chosen["mean_dice"] < best_unconstrained["mean_dice"]
    # among the allowed rows the chosen one is the best
    allowed = [r for r in table if r["fp_components_per_case"] <= base["fp_components_per_case"]]
    assert chosen["mean_dice"] == pytest.approx(max(r["mean_dice"] for r in allowed))
    # ties go to the plain threshold, no TTA, no keep-largest, and the largest size filter under
    # SIZE_MARGIN x the smallest validation clot volume (case 2: 60 voxels)
    assert _chosen(result) == PostProcessing(0.5, False, max(m for m in MIN_SIZES if m <= SIZE_MARGIN * 60), False)



def test_a_peak_filter_keeps_the_low_threshold_outline_without_the_faint_false_positive():
    """Hysteresis: at threshold 0.3 the clot's faint half joins its confident
    half (peak 0.9), while the faint false positive (peak 0.35) is dropped by
    a 0.6 peak filter: the Dice gain of the low threshold without its alarm."""
    prob1, truth1 = _empty()
    _box(truth1, 2, 2, 1, (4, 4, 4))
    _box(prob1, 2, 2, 1, (4, 4, 2), 0.9)
    _box(prob1, 2, 2, 3, (4, 4, 2), 0.35)
    _box(prob1, 15, 15, 5, (5, 4, 2), 0.35)
    prob2, truth2 = _empty()
    _box(truth2, 2, 2, 1, (5, 3, 2))
    _box(truth2, 15, 15, 6, (5, 3, 2))
    prob2[truth2] = 0.9
    cases = [([prob1], truth1), ([prob2], truth2)]
    without = tune(cases, min_clot_cases=1, min_peaks=(0.0,))
    result = tune(cases, min_clot_cases=1)
    # the lowest peak filter above the threshold that does it, the largest size filter under the cap
    cap = max(m for m in MIN_SIZES if m <= SIZE_MARGIN * 60)
    assert _chosen(result) == PostProcessing(0.3, False, cap, False, 0.6)
    chosen = result["validation"]["chosen"]
    assert chosen["mean_dice"] == pytest.approx(1.0)
    assert chosen["fp_components_per_case"] == 0.0
    assert chosen["mean_dice"] > without["validation"]["chosen"]["mean_dice"] + 0.03
    # a peak filter is only tried above the threshold (below it, it would change nothing)
    assert all(r["min_component_peak"] == 0.0 or r["min_component_peak"] > r["threshold"] for r in result["table"])
    # testing.py's post-processing does the same to the volume
    from clotseg.inference import postprocess
    pred = postprocess((prob1 > 0.3).astype(np.uint8), cap, False, prob=prob1, min_peak=0.6)
    assert np.array_equal(pred.astype(bool), truth1)
    with pytest.raises(ValueError, match="needs the probabilities"):
        postprocess((prob1 > 0.3).astype(np.uint8), min_peak=0.6)

def test_flip_tta_is_chosen_when_it_removes_a_one_member_artefact():
    prob, truth = _clot_case()
    artefact = prob.copy()
    _box(artefact, 12, 12, 4, (4, 4, 4), 0.95)     # only the plain prediction sees it; 64 voxels > the clot
    result = tune([([artefact, prob, prob], truth), ([prob, prob, prob], truth)], min_clot_cases=1)
    chosen = _chosen(result)
    assert chosen.tta_flips is True
    assert result["validation"]["chosen"]["mean_dice"] == pytest.approx(1.0)
    assert len(result["table"]) == 2 * _n_rows(THRESHOLDS, MIN_SIZES)


def test_without_tta_members_tta_is_never_offered():
    prob, truth = _clot_case(blob=(2, 2, 1))
    result = tune([([prob], truth), ([prob, prob, prob], truth)], min_clot_cases=1)    # one case has no flip members
    assert {r["tta_flips"] for r in result["table"]} == {False}
    assert len(result["table"]) == _n_rows(THRESHOLDS, MIN_SIZES)


def test_tune_needs_cases():
    with pytest.raises(ValueError, match="no validation cases"):
        tune([])


@pytest.mark.parametrize("gaps", [None, [[3], None, [1, 6]]])
def test_every_table_row_matches_the_testing_code_path(gaps):
    """The tuner scores without relabelling; each of its rows must equal what
    testing computes: to_mask -> postprocess -> case_metrics, with the cases'
    slice gaps (a slice import's) where they have them."""
    rng = np.random.default_rng(7)
    cases = []
    for i in range(3):
        prob = rng.random(SHAPE).astype(np.float32) ** 6          # sparse speckle, some of it above 0.3
        truth = np.zeros(SHAPE, bool)
        if i != 2:                                                 # case 2 is clot-free
            _box(truth, 5 + 3 * i, 6, 2, (5, 4, 3))
            prob[truth] = rng.uniform(0.45, 0.95, int(truth.sum()))
        members = [prob, np.clip(prob + rng.normal(0, 0.1, SHAPE), 0, 1).astype(np.float32)]
        cases.append((members, truth))
    # a vessel (CTA lumen) along the rows on slices 0-4, beside the clots; spacing 0.5 x 0.5 x 2 mm
    vessel = np.zeros(SHAPE, bool)
    vessel[:, 10:12, 0:5] = True
    near = [(vessel, (0.5, 0.5, 2.0))] * len(cases)
    result = tune(cases, thresholds=(0.3, 0.5, 0.7), min_sizes=(0, 3, 10), min_clot_cases=1, slice_gaps=gaps,
                  vessels=near)
    assert len(result["table"]) == 2 * _n_rows((0.3, 0.5, 0.7), (0, 3, 10)) * len(VESSEL_DISTANCES_MM)
    assert {r["max_vessel_distance_mm"] for r in result["table"]} == set(VESSEL_DISTANCES_MM)
    for row in result["table"]:
        dices, fps = [], []
        for (members, truth), case_gaps in zip(cases, gaps or [None] * len(cases)):
            prob = np.mean(members, axis=0) if row["tta_flips"] else members[0]
            pred = postprocess(to_mask(prob[..., None], row["threshold"]), row["min_component_voxels"],
                               row["keep_largest_component"], slice_gaps=case_gaps, prob=prob[..., None],
                               min_peak=row["min_component_peak"], vessel=vessel, spacing_mm=(0.5, 0.5, 2.0),
                               max_vessel_mm=row["max_vessel_distance_mm"])
            m = case_metrics(pred, truth, slice_gaps=case_gaps)
            dices.append(m["dice"])
            fps.append(m["n_false_positive_components"])
        assert row["mean_dice"] == pytest.approx(np.mean(dices), abs=1e-9), row
        assert row["fp_components_per_case"] == pytest.approx(np.mean(fps), abs=1e-9), row


def test_a_speck_across_a_slice_gap_is_its_own_component():
    """A slice import's gap (sidecar slice_gaps) separates runs: a speck on the
    slice after the gap does not join the clot before it, so it counts as a
    false-positive component and a size filter may remove it, as testing.py's
    post-processing and scoring see it."""
    prob, truth = _empty()
    _box(truth, 4, 4, 2, (4, 4, 2))            # clot on slices 2-3, 32 voxels
    _box(prob, 4, 4, 2, (4, 4, 2), 0.9)
    _box(prob, 4, 4, 4, (2, 2, 1), 0.9)        # 4-voxel speck on slice 4, touching the clot's last slice
    cases = [([prob], truth)] * 5
    joined = tune(cases, min_clot_cases=1)
    split = tune(cases, min_clot_cases=1, slice_gaps=[[3]] * 5)   # slice 3 -> 4 is a gap
    assert joined["validation"]["default"]["fp_components_per_case"] == 0.0
    assert joined["validation"]["chosen"]["mean_dice"] == pytest.approx(2 * 32 / (36 + 32))
    assert split["validation"]["default"]["fp_components_per_case"] == 1.0
    assert 4 < _chosen(split).min_component_voxels <= 16
    assert split["validation"]["chosen"]["mean_dice"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="slice_gaps"):
        tune(cases, slice_gaps=[[3]])


def test_chosen_never_worse_than_default_on_random_cases():
    rng = np.random.default_rng(11)
    for trial in range(4):
        cases = []
        for i in range(3):
            prob = (rng.random(SHAPE) ** 4).astype(np.float32)
            truth = np.zeros(SHAPE, bool)
            if (trial + i) % 3:
                _box(truth, rng.integers(0, 18), rng.integers(0, 18), rng.integers(0, 6), (4, 4, 3))
                prob[truth] = rng.uniform(0.3, 1.0, int(truth.sum()))
            cases.append(([prob], truth))
        val = tune(cases, min_clot_cases=1)["validation"]
        assert val["chosen"]["mean_dice"] >= val["default"]["mean_dice"] - 1e-12
        assert val["chosen"]["fp_components_per_case"] <= val["default"]["fp_components_per_case"] + 1e-12



def test_a_fixed_choice_is_held_and_the_rest_chosen_given_it():
    """config.py's THRESHOLD = 0.3: no other threshold is tried, the plain
    reference is 0.3 with nothing else, and the size filter is chosen for
    0.3 (the spurious blobs still go)."""
    cases = [([_clot_case(blob=(2, 2, 1))[0]], _clot_case()[1]),
             ([_clot_case(blob=(1, 2, 2))[0]], _clot_case()[1])]
    result = tune(cases, min_clot_cases=1, fixed={"threshold": 0.3, "min_component_peak": None})
    assert {r["threshold"] for r in result["table"]} == {0.3}
    assert result["fixed"] == {"threshold": 0.3}                       # None = not fixed
    chosen = _chosen(result)
    assert chosen.threshold == 0.3 and 4 <= chosen.min_component_voxels <= 13.5
    assert result["validation"]["default"]["fp_components_per_case"] == 1.0    # 0.3 alone keeps the blobs
    assert result["validation"]["chosen"]["fp_components_per_case"] == 0.0
    assert "held as config.py sets them: threshold = 0.3" in result["reason"]
    # a fixed size filter is held even above the cap the tuner keeps for its own choices
    big = tune(cases, min_clot_cases=1, fixed={"min_component_voxels": 500})
    assert _chosen(big).min_component_voxels == 500
    # a fixed peak filter is held at any threshold (it is the user's)
    low = tune(cases, min_clot_cases=1, fixed={"min_component_peak": 0.2})
    assert {r["min_component_peak"] for r in low["table"]} == {0.2}
    assert len(low["table"]) == len(THRESHOLDS) * 2 * len(MIN_SIZES)     # no TTA members: one TTA choice
    with pytest.raises(ValueError, match="unknown"):
        tune(cases, min_clot_cases=1, fixed={"thresh": 0.5})
    with pytest.raises(ValueError, match="flip members"):
        tune(cases, min_clot_cases=1, fixed={"tta_flips": True})


# ------------------------------------------------------------------ resolve
TUNED = {"chosen": {"threshold": 0.6, "tta_flips": True, "min_component_voxels": 10,
                    "keep_largest_component": False}}


HELD = {"max_component_cta_hu": 130.0}   # config.py holds the lumen filter (the tiny cohorts have a CTA in HU)


def test_resolve_uses_the_tuned_choice_when_config_leaves_it_open(tmp_path):
    s = tiny_settings(tmp_path)          # THRESHOLD etc. default to None
    assert resolve(s, TUNED) == PostProcessing(0.6, True, 10, False, **HELD)


def test_resolve_lets_config_override_each_tuned_value(tmp_path):
    s = tiny_settings(tmp_path, threshold=0.45, keep_largest_component=True)
    assert resolve(s, TUNED) == PostProcessing(0.45, True, 10, True, **HELD)
    s = tiny_settings(tmp_path, tta_flips=False, min_component_voxels=0)
    # falsy overrides (False, 0) still override
    assert resolve(s, TUNED) == PostProcessing(0.6, False, 0, False, **HELD)
    # a run tuned before the peak filter existed has no such key: no peak filter, unless config.py sets one
    assert resolve(tiny_settings(tmp_path), TUNED).min_component_peak == 0.0
    tuned_peak = {"chosen": {**TUNED["chosen"], "min_component_peak": 0.8}}
    assert resolve(tiny_settings(tmp_path), tuned_peak) == PostProcessing(0.6, True, 10, False, 0.8, **HELD)
    assert resolve(tiny_settings(tmp_path, min_component_peak=0), tuned_peak).min_component_peak == 0


def test_resolve_falls_back_to_the_defaults_without_a_tuned_choice(tmp_path):
    assert DEFAULT == PostProcessing(0.5, False, 0, False)
    assert resolve(tiny_settings(tmp_path, max_component_cta_hu=0.0), None) == DEFAULT
    assert resolve(tiny_settings(tmp_path), None) == PostProcessing(0.5, False, 0, False, **HELD)
    s = tiny_settings(tmp_path, min_component_voxels=20)
    assert resolve(s, None) == PostProcessing(0.5, False, 20, False, **HELD)


@pytest.mark.parametrize("name,value", [("threshold", 1.0), ("threshold", 0), ("min_component_voxels", -1),
                                        ("tta_flips", "yes"), ("keep_largest_component", "no"),
                                        ("min_component_peak", 1.0), ("min_component_peak", -0.1),
                                        ("min_component_peak", "high"), ("max_vessel_distance_mm", -1.0),
                                        ("max_vessel_distance_mm", 51.0), ("max_vessel_distance_mm", "near")])
def test_postprocessing_overrides_are_validated(tmp_path, name, value):
    from clotseg.errors import ConfigError

    with pytest.raises(ConfigError, match=name.upper()):
        tiny_settings(tmp_path, **{name: value})


def test_tuned_choice_round_trips_through_json(tmp_path):
    import json

    prob, truth = _clot_case(blob=(2, 2, 1))
    result = tune([([prob], truth)], min_clot_cases=1)
    text = json.dumps(result)                     # what postprocessing.json holds
    again = json.loads(text)
    assert resolve(tiny_settings(tmp_path, max_component_cta_hu=None), again) == _chosen(result)
    assert set(again["chosen"]) == set(DEFAULT.as_dict())
    assert all(set(r) >= set(DEFAULT.as_dict()) | {"mean_dice", "fp_components_per_case"} for r in again["table"])


def test_a_filter_that_loses_a_validation_clot_is_refused():
    """A confident 27-voxel false alarm on each of two controls can only be
    removed by a size filter that also deletes a found 8-voxel clot: mean
    Dice would rise from 0.5 to 0.75, but one of the two clots would be lost."""
    big_prob, big_truth = _empty()
    _box(big_truth, 4, 4, 2, (4, 4, 4))
    _box(big_prob, 4, 4, 2, (4, 4, 4), 0.9)
    small_prob, small_truth = _empty()
    _box(small_truth, 4, 4, 2, (2, 2, 2))
    _box(small_prob, 4, 4, 2, (2, 2, 2), 0.9)
    cases = [([big_prob], big_truth), ([small_prob], small_truth)]
    for _ in range(2):
        control_prob, control_truth = _empty()
        _box(control_prob, 10, 10, 3, (3, 3, 3), 0.9)
        cases.append(([control_prob], control_truth))
    result = tune(cases, min_clot_cases=1)
    best_unconstrained = max(result["table"], key=lambda r: r["mean_dice"])
    assert best_unconstrained["mean_dice"] == pytest.approx(0.75)
    assert best_unconstrained["clots_found"] == 1
    val = result["validation"]
    assert val["default"]["clots_found"] == val["chosen"]["clots_found"] == 2
    assert val["chosen"]["mean_dice"] == pytest.approx(0.5)
    assert _chosen(result).min_component_voxels < 8


def test_too_few_validation_clot_cases_keep_the_plain_default():
    """The same cases that choose a 10-voxel filter with the guard off keep
    the plain default when fewer than MIN_CLOT_CASES of them hold clot."""
    cases = [([_clot_case(blob=(2, 2, 1))[0]], _clot_case()[1]) for _ in range(3)]
    assert _chosen(tune(cases, min_clot_cases=1)).min_component_voxels > 0
    result = tune(cases)
    assert MIN_CLOT_CASES > 3
    assert _chosen(result) == DEFAULT
    assert "only 3 validation case(s) with clot" in result["reason"]
    assert result["table"]                                  # the table is still there to read
    many = cases * 2                                        # 6 clot cases: tuned again
    assert _chosen(tune(many)).min_component_voxels > 0


def test_a_filter_near_the_smallest_validation_clot_is_refused():
    """Confident 12-voxel false alarms on two controls, 27-voxel clots: a
    20-voxel filter removes the alarms and keeps every clot, the best on
    these cases, but it is above SIZE_MARGIN x the smallest validation
    clot and would delete the smaller clots of new cases, so the tuner keeps
    a smaller filter."""
    cases = [([_clot_case()[0]], _clot_case()[1]) for _ in range(3)]
    for _ in range(2):
        control_prob, control_truth = _empty()
        _box(control_prob, 10, 10, 3, (2, 2, 3), 0.9)
        cases.append(([control_prob], control_truth))
    result = tune(cases, min_clot_cases=1)
    best_unconstrained = max(result["table"], key=lambda r: (r["mean_dice"], -r["min_component_voxels"]))
    assert best_unconstrained["min_component_voxels"] == 20 and best_unconstrained["mean_dice"] == pytest.approx(1.0)
    chosen = _chosen(result)
    assert chosen.min_component_voxels <= SIZE_MARGIN * 27
    assert result["validation"]["chosen"]["mean_dice"] == pytest.approx(0.6)     # the controls keep their alarm
    assert f"{SIZE_MARGIN * 27:g} voxels" in result["reason"]


def _keep_largest_cohort():
    """Five clot cases: in four a 27-voxel clot beside an 8-voxel false
    alarm, in one an 8-voxel clot beside a 27-voxel false alarm. Keeping
    the largest component raises the mean Dice (0.771 -> 0.800) and clears
    four alarms, but loses the fifth case's clot."""
    cases = []
    for k in range(5):
        prob, truth = _empty()
        big, small = (3, 3, 3), (2, 2, 2)
        clot, alarm = (big, small) if k < 4 else (small, big)
        _box(truth, 2, 2, 2, clot)
        _box(prob, 2, 2, 2, clot, 0.9)
        _box(prob, 14, 14, 5, alarm, 0.9)
        cases.append(([prob], truth))
    return cases


def test_keep_largest_may_lose_one_of_five_validation_clots_for_a_better_mean_dice():
    result = tune(_keep_largest_cohort(), min_clot_cases=1)
    chosen, val = _chosen(result), result["validation"]
    assert chosen.keep_largest_component
    assert val["default"]["clots_found"] == 5 and val["chosen"]["clots_found"] == 4
    assert val["chosen"]["mean_dice"] == pytest.approx(0.8)
    assert val["chosen"]["fp_components_per_case"] == pytest.approx(0.2)
    assert "more than 1 fewer clots" in result["reason"]


def test_without_found_slack_keep_largest_is_refused(monkeypatch):
    from clotseg import postprocessing
    monkeypatch.setattr(postprocessing, "FOUND_SLACK", 0.0)
    result = tune(_keep_largest_cohort(), min_clot_cases=1)
    assert not _chosen(result).keep_largest_component
    assert result["validation"]["chosen"]["clots_found"] == 5


def test_ties_go_to_the_largest_filter_under_the_cap_when_asked(monkeypatch):
    """The 4-voxel blobs go with a 6- or a 10-voxel filter alike (27-voxel
    clots, SIZE_MARGIN held at 0.5: cap 13.5): TIE_FILTER decides which of
    the tied filters is kept."""
    from clotseg import postprocessing
    monkeypatch.setattr(postprocessing, "SIZE_MARGIN", 0.5)
    cases = [([_clot_case(blob=(2, 2, 1))[0]], _clot_case()[1]),
             ([_clot_case(blob=(1, 2, 2))[0]], _clot_case()[1]),
             ([_clot_case()[0]], _clot_case()[1])]
    assert postprocessing.TIE_FILTER in ("smallest", "largest")
    monkeypatch.setattr(postprocessing, "TIE_FILTER", "smallest")
    assert _chosen(tune(cases, min_clot_cases=1)).min_component_voxels == 6
    monkeypatch.setattr(postprocessing, "TIE_FILTER", "largest")
    result = tune(cases, min_clot_cases=1)
    chosen = _chosen(result)
    assert chosen.min_component_voxels == 10                       # 20 would exceed 0.5 x 27
    assert not chosen.keep_largest_component and chosen.threshold == 0.5
    assert result["validation"]["chosen"]["mean_dice"] == pytest.approx(1.0)


def test_choices_within_the_dice_tolerance_count_as_tied(monkeypatch):
    """A faint voxel of each clot (0.45) is caught by 0.4 but not 0.5: a
    Dice gain of 0.019. Without a tolerance 0.4 wins; with DICE_TOLERANCE
    0.02 the two tie and the plainer 0.5 is kept; a gain beyond it still wins."""
    from clotseg import postprocessing

    def case(faint):
        prob, truth = _clot_case()
        prob[4, 4, 2] = faint
        return [prob], truth

    cases = [case(0.45) for _ in range(3)]
    assert postprocessing.DICE_TOLERANCE == 0.0
    result = tune(cases, min_clot_cases=1)
    assert _chosen(result).threshold == 0.4
    assert result["validation"]["chosen"]["mean_dice"] == pytest.approx(1.0)
    monkeypatch.setattr(postprocessing, "DICE_TOLERANCE", 0.02)
    result = tune(cases, min_clot_cases=1)
    assert _chosen(result).threshold == 0.5
    assert result["validation"]["chosen"]["mean_dice"] == pytest.approx(2 * 26 / 53)
    monkeypatch.setattr(postprocessing, "DICE_TOLERANCE", 0.01)
    assert _chosen(tune(cases, min_clot_cases=1)).threshold == 0.4


def _vessel_cohort():
    """Six clot cases whose clot sits against a vessel, and two controls with a
    confident 8-voxel speck 5 mm from any vessel; the clots are the same size
    as the specks, so no size or peak filter can tell them apart."""
    vessel = np.zeros(SHAPE, bool)
    vessel[:, 2:4, :] = True                   # a vessel along the rows, columns 2-3
    cases = []
    for i in range(8):
        prob, truth = _empty()
        if i < 6:
            _box(truth, 4 + i, 4, 3, (2, 2, 2))    # touches the vessel (column 4 next to 3)
            _box(prob, 4 + i, 4, 3, (2, 2, 2), 0.9)
        else:
            _box(prob, 10, 14, 3, (2, 2, 2), 0.9)  # columns 14-15: 10 columns = 5 mm from the vessel
        cases.append(([prob], truth))
    return cases, [(vessel, (0.5, 0.5, 2.0))] * len(cases)


def test_the_vessel_filter_removes_specks_away_from_the_vessels_and_keeps_the_clots():
    cases, near = _vessel_cohort()
    chosen = _chosen(tune(cases, vessels=near))
    assert chosen.max_vessel_distance_mm == max(VESSEL_DISTANCES_MM)    # ties: the widest that does it
    assert not chosen.keep_largest_component
    for (members, truth), (vessel, spacing) in zip(cases, near):
        pred = postprocess(to_mask(members[0][..., None], chosen.threshold), chosen.min_component_voxels,
                           chosen.keep_largest_component, prob=members[0][..., None],
                           min_peak=chosen.min_component_peak, vessel=vessel, spacing_mm=spacing,
                           max_vessel_mm=chosen.max_vessel_distance_mm)
        assert np.array_equal(pred > 0, truth)
    # without the CTA's vessels the filter is not searched, and a fixed one cannot be held
    plain = tune(cases)
    assert {r["max_vessel_distance_mm"] for r in plain["table"]} == {0.0}
    assert _chosen(plain).max_vessel_distance_mm == 0
    with pytest.raises(ValueError, match="vessel"):
        tune(cases, fixed={"max_vessel_distance_mm": 2.0})
    with pytest.raises(ValueError, match="vessels has 1"):
        tune(cases, vessels=near[:1])
    # a fixed distance beyond the grid's widest is scored as testing applies it: 6 mm keeps the specks
    held = tune(cases, vessels=near, fixed={"max_vessel_distance_mm": 6.0})
    assert {r["max_vessel_distance_mm"] for r in held["table"]} == {6.0}
    row = _row(held, PostProcessing(max_vessel_distance_mm=6.0))
    assert row["fp_components_per_case"] == pytest.approx(2 / 8)
    # ties (no speck to remove) go to no vessel filter, or with TIE_VESSEL = "widest" to the widest
    assert _chosen(tune(cases[:6], vessels=near[:6])).max_vessel_distance_mm == 0
    from unittest import mock

    from clotseg import postprocessing as pp

    with mock.patch.object(pp, "TIE_VESSEL", "widest"):
        assert _chosen(tune(cases[:6], vessels=near[:6])).max_vessel_distance_mm == max(VESSEL_DISTANCES_MM)


def test_vessel_distances_are_in_mm_per_axis():
    from clotseg.vessels import component_distances, vessel_mask

    vessel = np.zeros((20, 20, 10), bool)
    vessel[5, 5, 5] = True
    labels = np.zeros((20, 20, 10), np.int32)
    labels[5, 5, 5] = 1                        # on the vessel: 0
    labels[5, 9, 5] = 2                        # 4 columns away: 4 x 0.5 = 2 mm
    labels[5, 5, 7] = 3                        # 2 slices away: 2 x 2 = 4 mm
    labels[15, 15, 5] = 4                      # far: inf
    d = component_distances(labels, 4, vessel, (0.5, 0.5, 2.0), 4.0)
    assert d[:3] == pytest.approx([0.0, 2.0, 4.0]) and d[3] == np.inf
    assert component_distances(labels, 4, vessel, (0.5, 0.5, 2.0), 3.0)[2] == np.inf
    # labels of a box of the volume, placed by their offset
    assert component_distances(labels[4:, 4:], 4, vessel, (0.5, 0.5, 2.0), 4.0, offset=(4, 4, 0))[:3] == \
        pytest.approx([0.0, 2.0, 4.0])
    # the vessels are the CTA's voxels of at least 100 HU, whatever the modality order
    cta = np.array([[[99.0, 100.0]]])
    assert vessel_mask([np.zeros_like(cta), cta], ["NCCT", "CTA"]).tolist() == [[[False, True]]]
    with pytest.raises(ValueError, match="vessel mask"):
        postprocess(labels.astype(np.uint8), max_vessel_mm=2.0)


def test_a_vessel_filter_needs_a_cta_in_hu(tmp_path):
    from clotseg.errors import ConfigError

    assert tiny_settings(tmp_path, max_vessel_distance_mm=2.0).max_vessel_distance_mm == 2.0
    with pytest.raises(ConfigError, match="MAX_VESSEL_DISTANCE_MM > 0 needs a modality named 'CTA'"):
        tiny_settings(tmp_path, max_vessel_distance_mm=2.0, windows_hu={"CTA": None, "NCCT": (0.0, 200.0)})


def _lumen_cohort():
    """Six clot cases, each a filling defect (CTA 60 HU) beside a confident
    8-voxel component on opacified lumen (CTA 300 HU) of the same size and
    peak, and two controls with such a lumen component alone: only the
    median CTA value tells them apart."""
    cases, ctas = [], []
    for i in range(8):
        prob, truth = _empty()
        cta = np.full(SHAPE, 30.0, np.float32)
        if i < 6:
            _box(truth, 4 + i, 4, 3, (2, 2, 2))
            _box(prob, 4 + i, 4, 3, (2, 2, 2), 0.9)
            _box(cta, 4 + i, 4, 3, (2, 2, 2), 60.0)
        _box(prob, 10, 14, 3, (2, 2, 2), 0.9)
        _box(cta, 10, 14, 3, (2, 2, 2), 300.0)
        cases.append(([prob], truth))
        ctas.append(cta)
    return cases, ctas


def test_the_lumen_filter_drops_lumen_bright_components_and_keeps_the_filling_defects():
    from clotseg.postprocessing import CTA_LUMEN_HU

    cases, ctas = _lumen_cohort()
    result = tune(cases, ctas=ctas)
    assert {r["max_component_cta_hu"] for r in result["table"]} == set(CTA_LUMEN_HU)
    chosen = _chosen(result)
    assert chosen.max_component_cta_hu == max(CTA_LUMEN_HU)
    assert not chosen.keep_largest_component and chosen.min_component_voxels < 8
    assert result["validation"]["chosen"]["fp_components_per_case"] == 0
    for (members, truth), cta in zip(cases, ctas):
        prob = members[0][..., None]
        pred = postprocess(to_mask(prob, chosen.threshold), chosen.min_component_voxels,
                           chosen.keep_largest_component, prob=prob, min_peak=chosen.min_component_peak,
                           cta=cta, max_cta_hu=chosen.max_component_cta_hu)
        assert np.array_equal(pred > 0, truth)
        # without the filter the lumen component stays
        kept = postprocess(to_mask(prob, 0.5), chosen.min_component_voxels, False)
        assert (kept > 0).sum() == truth.sum() + 8
    # without a CTA the filter is not searched, and a held one needs it
    plain = tune(cases)
    assert {r["max_component_cta_hu"] for r in plain["table"]} == {0.0}
    with pytest.raises(ValueError, match="CTA"):
        tune(cases, fixed={"max_component_cta_hu": 130.0})
    with pytest.raises(ValueError, match="ctas has 1"):
        tune(cases, ctas=ctas[:1])
    # a held value is scored as testing applies it: 400 HU keeps the 300 HU components
    held = tune(cases, ctas=ctas, fixed={"max_component_cta_hu": 400.0})
    assert {r["max_component_cta_hu"] for r in held["table"]} == {400.0}
    row = _row(held, PostProcessing(max_component_cta_hu=400.0))
    assert row["fp_components_per_case"] == pytest.approx(1.0)
    # ties (no lumen component to remove) go to no lumen filter
    clean = [([np.where(c > 100, 0.0, m[0]).astype(m[0].dtype)], t) for (m, t), c in zip(cases, ctas)]
    assert _chosen(tune(clean, ctas=ctas)).max_component_cta_hu == 0
    with pytest.raises(ValueError, match="max_cta_hu needs the CTA"):
        postprocess(to_mask(cases[0][0][0][..., None], 0.5), max_cta_hu=130.0)


def test_component_medians_read_each_component_in_its_box():
    from clotseg.vessels import component_medians, cta_volume

    values = np.arange(4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2)
    labels = np.zeros((4, 4, 2), np.int32)
    labels[0, 0, 0] = labels[0, 1, 0] = labels[0, 2, 0] = 1      # values 0, 2, 4: median 2
    labels[3, 3, 1] = 3                                            # label 2 has no voxel
    assert component_medians(labels, 3, values)[[0, 2]].tolist() == [2.0, 31.0]
    assert np.isnan(component_medians(labels, 3, values)[1])
    assert component_medians(labels[2:, 2:], 3, values, offset=(2, 2, 0))[2] == 31.0
    assert component_medians(labels, 0, values).shape == (0,)
    # random components in a random volume: each one's median, whatever the background around it
    rng = np.random.default_rng(0)
    values = rng.normal(40.0, 30.0, (12, 10, 6))
    labels = rng.integers(0, 5, (8, 7, 6)) * (rng.random((8, 7, 6)) < 0.3)
    medians = component_medians(labels, 4, values, offset=(3, 2, 0))
    for k in range(1, 5):
        assert medians[k - 1] == pytest.approx(np.median(values[3:11, 2:9][labels == k]))
    with pytest.raises(ValueError, match="same number of axes"):
        component_medians(labels, 3, values[..., 0])
    # the CTA is found by name, whatever the modality order
    cta = np.array([[[99.4, 300.6, -40000.0]]])
    out = cta_volume([np.zeros_like(cta), cta], ["NCCT", "CTA"])
    assert out.dtype == np.int16 and out.tolist() == [[[99, 301, -32768]]]     # whole HU, clipped to int16


def test_the_lumen_filter_is_held_off_without_a_cta_in_hu(tmp_path):
    from clotseg.errors import ConfigError
    from clotseg.postprocessing import fixed_by, resolve
    from clotseg.settings import Settings

    assert Settings().max_component_cta_hu == 130.0                     # the default holds it
    with_cta = tiny_settings(tmp_path, max_component_cta_hu=130.0)
    assert fixed_by(with_cta)["max_component_cta_hu"] == 130.0
    assert tiny_settings(tmp_path, max_component_cta_hu=None).max_component_cta_hu is None
    assert "max_component_cta_hu" not in fixed_by(tiny_settings(tmp_path, max_component_cta_hu=None))
    # a CTA already normalised (no HU window) or no CTA at all: no error, the filter is held off,
    # also over a run's tuned value
    tuned = {"chosen": {**DEFAULT.as_dict(), "max_component_cta_hu": 130.0}}
    for other in (dict(windows_hu={"CTA": None, "NCCT": (0.0, 200.0)}),
                  dict(modality_patterns={"NCCT": "CS<ID>_NCCT_Reg_Binary.npy"}, input_shape=(16, 16, 1),
                       windows_hu={"NCCT": (0.0, 200.0)})):
        s = tiny_settings(tmp_path, max_component_cta_hu=130.0, **other)
        assert fixed_by(s)["max_component_cta_hu"] == 0.0
        assert resolve(s, tuned).max_component_cta_hu == 0.0
    assert resolve(with_cta, tuned).max_component_cta_hu == 130.0
    for bad in (-1.0, 5000.0, "bright"):
        with pytest.raises(ConfigError, match="MAX_COMPONENT_CTA_HU must be"):
            tiny_settings(tmp_path, max_component_cta_hu=bad)
