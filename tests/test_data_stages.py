"""Stages 1-3 on tiny cohorts: split, slice, augment, and their restart rules."""

import json
import os

import numpy as np
import pytest

from clotseg.errors import StageError
from clotseg.intensity import center_crop, encode
from clotseg.io import read_json
from clotseg.pipeline import prepare_data
from clotseg.stages.augment import augmented_dir, build_transform, augment_one, choose_sources
from clotseg.stages.common import read_samples_csv
from clotseg.stages.slicing import sliced_dir
from clotseg.stages.split import split_cases
from tests.conftest import quiet, tiny_settings, write_cohort


def test_split_is_seeded_disjoint_and_order_independent():
    ids = [f"CS{i}" for i in range(1, 21)]
    a = split_cases(ids, 0.6, 0.2, seed=7)
    b = split_cases(list(reversed(ids)), 0.6, 0.2, seed=7)
    c = split_cases(ids, 0.6, 0.2, seed=8)
    assert a == b
    assert a != c
    assert [len(a[k]) for k in ("Training", "Validation", "Testing")] == [12, 4, 4]
    union = set(a["Training"]) | set(a["Validation"]) | set(a["Testing"])
    assert union == set(ids)
    assert sum(len(v) for v in a.values()) == len(ids)


@pytest.mark.parametrize("n", [3, 4, 5, 7])
def test_split_gives_every_cohort_a_case(n):
    s = split_cases([f"CS{i}" for i in range(n)], 0.6, 0.2, seed=0)
    assert all(len(v) >= 1 for v in s.values())
    assert sum(len(v) for v in s.values()) == n


def test_prepare_data_writes_expected_stores(project):
    result = prepare_data(project, log=quiet, demo_if_empty=False)
    split = read_json(project.processed_path / "split.json")
    assert split["cohorts"] == result["cohorts"]
    n_train_slices = 6 * len(result["cohorts"]["Training"])
    images = np.load(sliced_dir(project, "Training") / "images.npy", allow_pickle=False)
    masks = np.load(sliced_dir(project, "Training") / "masks.npy", allow_pickle=False)
    assert images.shape == (n_train_slices, 64, 64, 2) and images.dtype == np.uint8
    assert masks.shape == (n_train_slices, 64, 64) and set(np.unique(masks)) <= {0, 1}
    rows = read_samples_csv(sliced_dir(project, "Training") / "samples.csv")
    # sample k is slice `slice` of case `case_id`: check one against the source volume
    row = rows[3]
    cta = np.load(project.volume_path / f"{row['case_id']}_CTA_Binary.npy")
    ncct = np.load(project.volume_path / f"{row['case_id']}_NCCT_Reg_Binary.npy")
    k = int(row["slice"])
    np.testing.assert_array_equal(center_crop(images[3, ..., 0], cta.shape[:2]), encode(cta[..., k], project.windows_hu["CTA"]))
    np.testing.assert_array_equal(center_crop(images[3, ..., 1], cta.shape[:2]), encode(ncct[..., k], project.windows_hu["NCCT"]))
    aug = np.load(augmented_dir(project, "Training") / "images.npy")
    assert aug.shape == (40, 64, 64, project.model_channels)
    assert np.load(augmented_dir(project, "Validation") / "images.npy").shape[0] == 16
    man = read_json(augmented_dir(project, "Training") / "manifest.json")
    assert man["n_samples"] == 40 and man["complete"] is True
    # POSITIVE_FRACTION 0.5 of 40 samples come from clot slices (flips keep clot in view)
    assert man["n_positive"] == 20


def test_rerun_is_a_noop_and_does_not_duplicate(project):
    prepare_data(project, log=quiet, demo_if_empty=False)
    store = augmented_dir(project, "Training")
    before = {p.name: p.stat().st_mtime_ns for p in store.iterdir()}
    messages = []
    prepare_data(project, log=messages.append, demo_if_empty=False)
    after = {p.name: p.stat().st_mtime_ns for p in store.iterdir()}
    assert before == after
    assert any("up to date" in m for m in messages)
    assert np.load(store / "images.npy").shape[0] == 40


def test_changed_setting_rebuilds_only_downstream(project):
    prepare_data(project, log=quiet, demo_if_empty=False)
    sliced_before = (sliced_dir(project, "Training") / "manifest.json").stat().st_mtime_ns
    bigger = project.replace(target_sample_size_aug_train=24)
    prepare_data(bigger, log=quiet, demo_if_empty=False)
    assert (sliced_dir(project, "Training") / "manifest.json").stat().st_mtime_ns == sliced_before
    assert np.load(augmented_dir(project, "Training") / "images.npy").shape[0] == 24


def test_flags_false_without_output_name_the_flag(project):
    with pytest.raises(StageError, match="TRAIN_TEST_SPLIT = True"):
        prepare_data(project.replace(train_test_split=False), log=quiet, demo_if_empty=False)
    with pytest.raises(StageError, match="SLICE_EXTRACT = True"):
        prepare_data(project.replace(slice_extract=False), log=quiet, demo_if_empty=False)


def test_flags_false_reuse_output_on_disk(project):
    prepare_data(project, log=quiet, demo_if_empty=False)
    off = project.replace(train_test_split=False, slice_extract=False, data_aug=False,
                          target_sample_size_aug_train=99)
    msgs = []
    out = prepare_data(off, log=msgs.append, demo_if_empty=False)
    assert out["augmented"]["Training"]["n_samples"] == 40   # reused, not rebuilt at 99
    assert any("reusing" in m for m in msgs)


def test_augmentation_is_reproducible_and_worker_independent(tmp_path):
    results = []
    for workers, sub in ((1, "a"), (2, "b"), (1, "c")):
        s = tiny_settings(tmp_path / sub, num_workers=workers, target_sample_size_aug_train=300)
        write_cohort(s)
        prepare_data(s, log=quiet, demo_if_empty=False)
        results.append(((augmented_dir(s, "Training") / "images.npy").read_bytes(),
                        (augmented_dir(s, "Training") / "masks.npy").read_bytes()))
    assert results[0] == results[1] == results[2]


def _flips(a):
    return {"none": a, "h": a[:, ::-1], "v": a[::-1, :], "hv": a[::-1, ::-1]}


def test_augment_keeps_planted_pattern_aligned():
    """An asymmetric L drawn in CTA, NCCT and mask: after augmentation the
    image channels must match the same flip as the mask, and the mask stays
    binary with the same area."""
    t = build_transform(2, p=1.0)
    img = np.full((32, 32, 2), 30, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:20, 3:6] = 1
    mask[17:20, 3:15] = 1
    img[mask > 0] = 200
    seen = set()
    for seed in range(40):
        a_img, a_mask = augment_one(t, img, mask, seed)
        assert set(np.unique(a_mask)) <= {0, 1}
        assert a_mask.sum() == mask.sum()
        mask_flip = [k for k, m in _flips(mask).items() if np.array_equal(m, a_mask)]
        assert len(mask_flip) == 1
        for c in range(2):
            chan = a_img[..., c].astype(float)
            scores = {k: np.corrcoef(chan.ravel(), m.ravel().astype(float))[0, 1] for k, m in _flips(mask).items()}
            assert max(scores, key=scores.get) == mask_flip[0]
        seen.add(mask_flip[0])
        again_img, again_mask = augment_one(t, img, mask, seed)
        assert np.array_equal(again_img, a_img) and np.array_equal(again_mask, a_mask)
    assert len(seen) == 4  # all four flip combinations occur over 40 seeds


def test_choose_sources_balances_and_cycles():
    clot = np.array([0] * 90 + [5] * 10)
    rng = np.random.default_rng(0)
    picks = choose_sources(clot, 100, 0.3, rng)
    assert picks.size == 100
    assert (clot[picks] > 0).sum() == 30
    pos = picks[clot[picks] > 0]
    # 30 positives from 10 slices: each used exactly 3 times
    assert np.all(np.bincount(pos, minlength=100)[90:] == 3)
    assert (clot[choose_sources(np.zeros(20), 10, 0.5, rng)] == 0).all()


def test_killed_stage_leaves_previous_output_intact(project, monkeypatch):
    prepare_data(project, log=quiet, demo_if_empty=False)
    store = augmented_dir(project, "Training")
    good = (store / "images.npy").read_bytes()
    import clotseg.stages.augment as aug

    def boom(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(aug, "_augment_chunk", boom)
    with pytest.raises(RuntimeError):
        prepare_data(project.replace(target_sample_size_aug_train=41), log=quiet, demo_if_empty=False)
    assert (store / "images.npy").read_bytes() == good
    assert not [p for p in store.parent.iterdir() if p.name.startswith(".")]


from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402


@given(n=st.integers(3, 300), train=st.floats(0.05, 0.9), val=st.floats(0.05, 0.9), seed=st.integers(0, 2**31),
       shuffle_seed=st.integers(0, 1000))
@hsettings(max_examples=150, deadline=None)
def test_split_properties(n, train, val, seed, shuffle_seed):
    if train + val >= 1:
        val = (1 - train) / 2
    ids = [f"CS{i}" for i in range(n)]
    s = split_cases(ids, train, val, seed)
    shuffled = list(np.random.default_rng(shuffle_seed).permutation(ids))
    assert split_cases(shuffled, train, val, seed) == s                 # listing order never matters
    parts = [set(s[k]) for k in ("Training", "Validation", "Testing")]
    assert set().union(*parts) == set(ids) and sum(map(len, parts)) == n   # disjoint cover
    assert all(len(p) >= 1 for p in parts)
    assert abs(len(parts[0]) - n * train) <= 1.5 or len(parts[2]) == 1   # sizes follow the percentages


@given(n=st.integers(5, 200), free=st.floats(0.05, 0.5), seed=st.integers(0, 2**31))
@hsettings(max_examples=100, deadline=None)
def test_stratified_split_spreads_each_label(n, free, seed):
    ids = [f"CS{i}" for i in range(n)]
    strata = {c: i < max(1, int(n * free)) for i, c in enumerate(ids)}     # True = clot-free here
    s = split_cases(ids, 0.6, 0.2, seed, strata)
    n_free = sum(strata.values())
    assert sum(len(v) for v in s.values()) == n and set().union(*map(set, s.values())) == set(ids)
    for cohort, share in (("Training", 0.6), ("Validation", 0.2)):
        got = sum(strata[c] for c in s[cohort])
        assert abs(got - n_free * share) <= 1.0 + 1e-9      # each label split by the percentages
    if n_free >= 3:
        assert all(any(strata[c] for c in v) for v in s.values())   # the controls reach every cohort


def test_pipeline_split_puts_clot_free_cases_in_every_cohort(tmp_path):
    s = tiny_settings(tmp_path)
    write_cohort(s, n=10, clot_free=(2, 5, 9))
    out = prepare_data(s, log=quiet, demo_if_empty=False)
    free = {"CS2", "CS5", "CS9"}
    assert all(free & set(out["cohorts"][k]) for k in ("Training", "Validation", "Testing"))
    saved = read_json(s.processed_path / "split.json")
    assert saved["stratified_by"] == "has_clot"
    assert sum(v["False"] for v in saved["strata_counts"].values()) == 3
    plain = prepare_data(s.replace(stratify_split=False), log=quiet, demo_if_empty=False)
    assert set(sum(plain["cohorts"].values(), [])) == set(sum(out["cohorts"].values(), []))
