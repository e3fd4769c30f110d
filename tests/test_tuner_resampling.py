"""bench/tuner_resampling.py: the resampling of the post-processing tuner, at a tiny size."""

import numpy as np

from bench.tuner_resampling import RULES, resample

SHAPE = (16, 16, 6)


def _cohort(n=16, seed=0):
    """Clot cases whose clot sits beside a smaller false alarm (every fifth:
    a larger one), and clot-free cases with one alarm."""
    rng = np.random.default_rng(seed)
    members, truths = [], []
    for k in range(n):
        prob, truth = np.zeros(SHAPE, np.float32), np.zeros(SHAPE, bool)
        r, c = rng.integers(0, 6, 2)
        if k % 4:
            clot, alarm = ((3, 3, 2), (2, 2, 1)) if k % 5 else ((2, 2, 1), (3, 3, 2))
            truth[r:r + clot[0], c:c + clot[1], 1:1 + clot[2]] = True
            prob[truth] = 0.9
        else:
            alarm = (2, 2, 2)
        prob[10:10 + alarm[0], 10:10 + alarm[1], 3:3 + alarm[2]] = 0.8
        members.append(prob[None])
        truths.append(truth)
    return members, truths


def test_resampling_scores_every_rule_on_the_held_out_cases():
    members, truths = _cohort()
    out = resample(members, truths, draws=12)
    assert set(out) == set(RULES)
    n = len(out["plain"])
    assert n > 0 and all(len(rows) == n for rows in out.values())
    plain = np.array(out["plain"])
    # the plain choice keeps every alarm: one FP component per case, no control without an alarm
    assert np.allclose(plain[:, 1], 1.0) and np.allclose(plain[:, 3], 0.0)
    assert np.allclose(plain[:, 2], 1.0)                      # every clot is found
    kl = np.array(out["plain + KL"])
    assert (kl[:, 1] < plain[:, 1]).all()                     # keep-largest clears the clot cases' alarms
    assert kl[:, 0].mean() > plain[:, 0].mean()
    for rule in RULES:
        rows = np.array(out[rule])
        assert (rows[:, :3] >= 0).all() and (rows[:, 0] <= 1).all() and (rows[:, 2] <= 1).all(), rule


def test_the_lumen_rules_read_each_case_s_cta():
    """The alarms sit on lumen-bright CTA (300 HU), the clots on a filling
    defect (60 HU): the lumen filter at 130 HU clears every alarm and keeps
    every clot; without the CTA the lumen rules fall back to no filter."""
    members, truths = _cohort()
    ctas = []
    for prob, truth in zip(members, truths):
        cta = np.full(SHAPE, 40.0, np.float32)
        cta[(prob[0] > 0.5) & ~truth] = 300.0
        cta[truth] = 60.0
        ctas.append(cta)
    out = resample(members, truths, draws=12, ctas=ctas)
    lumen = np.array(out["plain + 130 HU"])
    assert np.allclose(lumen[:, 1], 0.0) and np.allclose(lumen[:, 3], 1.0) and np.allclose(lumen[:, 2], 1.0)
    assert np.allclose(np.array(out["plain"])[:, 1], 1.0)
    tuned = np.array(out["tuner with the lumen filter"])
    assert np.allclose(tuned[:, 1], 0.0) and tuned[:, 0].mean() > np.array(out["plain"])[:, 0].mean()
    without = resample(members, truths, draws=12)
    assert np.allclose(np.array(without["plain + 130 HU"])[:, 1], 1.0)


def test_the_peak_rules_hold_the_peak_filter():
    """The alarms peak at 0.75, the clots at 0.9: holding a peak of 0.8 clears
    every alarm whatever threshold the tuner picks; each peak rule's choice
    carries its peak (and no lumen filter without a CTA)."""
    from bench.tuner_resampling import _choose

    members, truths = _cohort()
    for prob in members:
        prob[(prob > 0.7) & (prob < 0.85)] = 0.75
    out = resample(members, truths, draws=12, rules=["plain", "tuner holding 130 HU and peak 0.8"])
    held = np.array(out["tuner holding 130 HU and peak 0.8"])
    assert np.allclose(held[:, 1], 0.0) and np.allclose(held[:, 3], 1.0)   # no alarm left, controls clean
    assert np.allclose(np.array(out["plain"])[:, 1], 1.0)
    tune_cases = [(list(m), t) for m, t in zip(members[:8], truths[:8])]
    for peak in (0.6, 0.7, 0.8):
        chosen = _choose(f"tuner holding 130 HU and peak {peak}", tune_cases)
        assert chosen["min_component_peak"] == peak and chosen["max_component_cta_hu"] == 0.0


def test_the_low_threshold_rule_reaches_clots_under_the_shipped_grid():
    """Every clot peaks at 0.25, under the shipped grid's lowest threshold
    (0.3): only the rule whose grid adds 0.1 and 0.2 finds them, by choosing
    a threshold below 0.25."""
    from bench.tuner_resampling import LOW_THRESHOLDS, _choose
    from clotseg import postprocessing as pp

    assert min(pp.THRESHOLDS) > 0.25 > max(LOW_THRESHOLDS)
    members, truths = _cohort()
    for prob, truth in zip(members, truths):
        prob[0][truth] = 0.25
    rules = ["tuner holding 130 HU", "tuner holding 130 HU, thresholds from 0.1"]
    out = resample(members, truths, draws=12, rules=rules)
    shipped, low = (np.array(out[r]) for r in rules)
    # clot cases found (the size filter may still drop the 4-voxel clots of every fifth case)
    assert np.allclose(shipped[:, 2], 0.0) and low[:, 2].min() > 0.5
    assert low[:, 0].mean() > shipped[:, 0].mean()
    tune_cases = [(list(m), t) for m, t in zip(members[:8], truths[:8])]
    assert _choose(rules[1], tune_cases)["threshold"] in LOW_THRESHOLDS
    assert _choose(rules[0], tune_cases)["threshold"] in pp.THRESHOLDS


def test_the_size_rules_bound_the_size_filter_and_the_slack_rule_keeps_every_clot():
    """"and size 0" holds no size filter; ", size margin M" caps it at M x
    the smallest tuning clot; ", no found slack" finds on the tuning cases
    every clot the plain default finds (the shipped slack may give one up for
    keep-largest-component, whose tie-break here keeps an alarm beside the
    every-fifth small clot)."""
    from bench.tuner_resampling import _choose
    from clotseg import postprocessing as pp

    members, truths = _cohort()
    # without the every-fifth small clot: 18-voxel clots beside 4-voxel alarms, controls with 8-voxel ones
    sized = [(list(members[i]), truths[i]) for i in (1, 2, 3, 4, 6, 7, 8, 9, 11, 12)]
    smallest = min(int(t.sum()) for _, t in sized if t.any())
    half = _choose("tuner holding 130 HU, size margin 0.5", sized)["min_component_voxels"]
    assert half > 0.25 * smallest                        # half the smallest clot lets a 6-voxel filter win
    shipped = _choose("tuner holding 130 HU", sized)["min_component_voxels"]
    assert _choose("tuner holding 130 HU and size 0", sized)["min_component_voxels"] == 0
    for margin in (0.25, 1.0):
        chosen = _choose(f"tuner holding 130 HU, size margin {margin}", sized)
        assert chosen["min_component_voxels"] <= margin * smallest
    ties = _choose("tuner holding 130 HU, ties to the smallest filter", sized)
    assert ties["min_component_voxels"] <= shipped

    tune_cases = [(list(m), t) for m, t in zip(members[:9], truths[:9])]    # with the small clot of case 5

    def found(choice):
        """Clots the choice finds on tune_cases."""
        return sum(pp._score(pp._case_components(np.mean(m, 0) if choice["tta_flips"] else m[0], t,
                                                 choice["threshold"]),
                             choice["min_component_voxels"], choice["keep_largest_component"],
                             choice["min_component_peak"])[2] for m, t in tune_cases)

    plain = found(pp.DEFAULT.as_dict())
    assert found(_choose("tuner holding 130 HU", tune_cases)) == plain - 1   # keep-largest drops the small clot
    assert found(_choose("tuner holding 130 HU, no found slack", tune_cases)) >= plain


def test_a_folder_without_a_finished_run_is_one_line_and_exit_status_2(tmp_path, capsys):
    import pytest

    from bench.tuner_resampling import DEV_CASES, main

    masks = tmp_path / "dev" / "masks"
    masks.mkdir(parents=True)
    for i in range(1, DEV_CASES + 1):
        np.save(masks / f"CS{i}_seg_corrected_binary.npy", np.zeros(SHAPE, np.uint8))
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "no_run"), "--dev", str(tmp_path / "dev")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no_run: no finished bench run" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_the_vessel_rules_drop_the_alarms_away_from_the_vessels():
    """The clots of the cohort lie in rows/columns 0-8, here all vessel; the
    alarms at rows/columns 10-12 are 2 voxels (6 mm at 3 mm spacing) away: the
    vessel filter held at 4 mm clears the alarms and keeps the clots; without
    vessels the rules fall back to no filter."""
    members, truths = _cohort()
    vessel = np.zeros(SHAPE, bool)
    vessel[:9, :9, :] = True
    near = [(vessel, (3.0, 3.0, 3.0))] * len(truths)
    out = resample(members, truths, draws=12, near=near)
    plain, vessel_only = np.array(out["plain"]), np.array(out["plain + 4 mm"])
    assert np.allclose(vessel_only[:, 1], 0.0) and np.allclose(vessel_only[:, 3], 1.0)   # no alarm left
    assert np.allclose(vessel_only[:, 2], 1.0)                                            # every clot found
    assert (vessel_only[:, 0] > plain[:, 0]).all()
    held = np.array(out["tuner holding 4 mm"])
    assert np.allclose(held[:, 1], 0.0)
    without = resample(members, truths, draws=12)
    assert np.allclose(np.array(without["plain + 4 mm"]), np.array(without["plain"]))


def test_rules_picks_the_rules_compared_and_refuses_an_unknown_one(tmp_path, capsys):
    import pytest

    from bench.tuner_resampling import main

    members, truths = _cohort()
    chosen = ("plain", "tuner holding 130 HU, ties within 0.01")
    out = resample(members, truths, draws=6, rules=chosen)
    assert set(out) == set(chosen) and all(out[r] for r in chosen)
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), "--rules", "plain", "no such rule"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--rules: unknown 'no such rule'" in err and len(err.strip().splitlines()) == 1


def test_the_tta_off_rule_holds_the_flips_off_where_the_tuner_would_average_them():
    """Each case's alarm is in the plain member only (the flipped members miss
    it), so averaging the flips drops every alarm and the shipped tuner takes
    the flips; the TTA-off rule does not, and is scored on the same draws."""
    from bench.tuner_resampling import _choose

    members, truths = _cohort()
    members = [np.concatenate([m, np.where(t, m, 0.0), np.where(t, m, 0.0)]) for m, t in zip(members, truths)]
    tune_cases = [(list(m), t) for m, t in zip(members[:8], truths[:8])]
    assert _choose("tuner holding 130 HU", tune_cases)["tta_flips"] is True
    chosen = _choose("tuner holding 130 HU and TTA off", tune_cases)
    assert chosen["tta_flips"] is False and chosen["max_component_cta_hu"] == 0.0
    out = resample(members, truths, draws=12, rules=["tuner holding 130 HU", "tuner holding 130 HU and TTA off"])
    shipped, off = np.array(out["tuner holding 130 HU"]), np.array(out["tuner holding 130 HU and TTA off"])
    assert np.allclose(shipped[:, 1], 0.0)                    # the flips cleared every alarm
    assert len(off) == len(shipped) > 0
