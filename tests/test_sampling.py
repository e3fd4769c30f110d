"""Which slices the augmentation stage samples (POSITIVE_FRACTION,
HARD_NEGATIVE_FRACTION) and how often it transforms them (AUG_P)."""

from collections import Counter

import numpy as np
import pytest

from clotseg.errors import ConfigError
from clotseg.io import read_json
from clotseg.pipeline import prepare_data
from clotseg.stages.augment import (
    augment_one,
    augmented_dir,
    build_transform,
    choose_sources,
    hard_negatives,
    modality_shift,
)
from clotseg.stages.common import read_samples_csv
from clotseg.stages.slicing import sliced_dir
from tests.conftest import quiet, tiny_settings, write_cohort


# ------------------------------------------------------------ hard negatives
def _store(cases, bright=None, hw=8, channels=2, base=50):
    """rows + (N, hw, hw, C) uint8 images: cases = {case: (depth, clot slices)};
    bright = {(case, slice): (n_pixels, channel)} pixels at code 255."""
    rows, images = [], []
    for cid, (depth, clot) in cases.items():
        for z in range(depth):
            img = np.full((hw, hw, channels), base, np.uint8)
            n, c = (bright or {}).get((cid, z), (0, 0))
            img.reshape(-1, channels)[:n, c] = 255
            images.append(img)
            rows.append({"case_id": cid, "slice": str(z), "clot_pixels": "9" if z in clot else "0"})
    return np.stack(images), rows


def _flagged(flags, rows):
    return {(r["case_id"], int(r["slice"])) for r, f in zip(rows, flags) if f}


def test_hard_negatives_are_neighbours_of_clots_within_the_same_case():
    images, rows = _store({"A": (12, {5, 6}), "B": (10, set()), "C": (8, {0})})
    flags = hard_negatives(images, rows, radius=3)
    assert flags.dtype == bool and flags.shape == (len(rows),)
    # no bright pixels anywhere: only the slices next to clots, never the clot slices,
    # never slices of the clot-free case B that share slice numbers with A's clot
    assert _flagged(flags, rows) == {("A", z) for z in (2, 3, 4, 7, 8, 9)} | {("C", z) for z in (1, 2, 3)}
    flags1 = hard_negatives(images, rows, radius=1)
    assert _flagged(flags1, rows) == {("A", 4), ("A", 7), ("C", 1)}


def test_hard_negatives_stop_at_a_slice_gap():
    """Slices 0-4 and 5-11 of case A are two runs (a slice import's gap after
    stack index 4): the clot on 5-6 makes 7-9 hard negatives, not 2-4."""
    images, rows = _store({"A": (12, {5, 6})})
    for r in rows:
        r["run"] = "0" if int(r["slice"]) < 5 else "1"
    assert _flagged(hard_negatives(images, rows, radius=3), rows) == {("A", z) for z in (7, 8, 9)}


def test_hard_negatives_add_the_brightest_clot_free_slices_and_never_clot_slices():
    cases = {"A": (12, {5, 6}), "B": (10, set()), "C": (8, {0})}
    negatives = [(cid, z) for cid, (d, clot) in cases.items() for z in range(d) if z not in clot]
    rng = np.random.default_rng(4)
    counts = rng.permutation(len(negatives)) + 1             # distinct bright-pixel counts 1..27
    bright = {key: (int(n), int(n) % 2) for key, n in zip(negatives, counts)}   # either channel counts
    bright[("A", 5)] = bright[("A", 6)] = (64, 0)            # the clot slices are the brightest of all
    images, rows = _store(cases, bright)
    flags = hard_negatives(images, rows, radius=0, top_share=0.25)
    flagged = _flagged(flags, rows)
    assert not flagged & {("A", 5), ("A", 6), ("C", 0)}
    ranked = sorted(negatives, key=lambda k: -bright[k][0])
    top = set(ranked[:len(flagged)])
    assert flagged == top                                    # exactly the brightest negatives ...
    assert 0.2 * len(negatives) <= len(flagged) <= 0.3 * len(negatives)   # ... about a quarter of them
    with_near = _flagged(hard_negatives(images, rows, radius=1, top_share=0.25), rows)
    assert with_near == top | {("A", 4), ("A", 7), ("C", 1)}


def test_hard_negatives_ignore_dark_slices_and_read_large_stores_in_chunks():
    # 600 slices of one clot-free case (more than one read chunk); bright counts 0..63 repeating
    n = 600
    counts = np.arange(n) % 64
    bright = {("X", z): (int(counts[z]), 0) for z in range(n)}
    images, rows = _store({"X": (n, set())}, bright)
    flags = hard_negatives(images, rows)
    assert 0.2 <= flags.mean() <= 0.35
    assert counts[flags].min() > counts[~flags].max()        # the ranking holds across chunks
    # a cohort without any bright pixel flags nothing (no "top quarter" of zeros)
    dark, dark_rows = _store({"X": (40, set())})
    assert not hard_negatives(dark, dark_rows).any()


def test_hard_negatives_read_a_memmap(tmp_path):
    cases = {"A": (12, {5, 6}), "B": (10, set())}
    bright = {("B", z): (z + 1, 1) for z in range(10)}
    images, rows = _store(cases, bright)
    np.save(tmp_path / "images.npy", images)
    mm = np.load(tmp_path / "images.npy", mmap_mode="r")
    np.testing.assert_array_equal(hard_negatives(mm, rows), hard_negatives(images, rows))


# ------------------------------------------------------------ choose_sources
def _groups(n_pos=10, n_neg=30, n_hard=6, seed=0):
    rng = np.random.default_rng(seed)
    clot = np.zeros(n_pos + n_neg, np.int64)
    clot[rng.choice(clot.size, n_pos, replace=False)] = rng.integers(1, 50, n_pos)
    hard = np.zeros(clot.size, bool)
    hard[rng.choice(np.flatnonzero(clot == 0), n_hard, replace=False)] = True
    return clot, hard


def test_choose_sources_gives_the_requested_positive_share_and_cycles_each_group():
    clot, _ = _groups()
    picks = choose_sources(clot, 100, 0.3, np.random.default_rng(1))
    assert picks.dtype == np.int64 and picks.shape == (100,)
    pos = picks[clot[picks] > 0]
    neg = picks[clot[picks] == 0]
    assert len(pos) == 30 and len(neg) == 70
    # every slice of a group is used before any is reused: counts differ by at most one
    pos_counts = Counter(pos.tolist())
    assert set(pos_counts) == set(np.flatnonzero(clot > 0).tolist()) and set(pos_counts.values()) == {3}
    neg_counts = Counter(neg.tolist())
    assert set(neg_counts) == set(np.flatnonzero(clot == 0).tolist())
    assert sorted(Counter(neg_counts.values()).items()) == [(2, 20), (3, 10)]    # 70 = 30 * 2 + 10


def test_choose_sources_hard_share():
    clot, hard = _groups()
    picks = choose_sources(clot, 100, 0.3, np.random.default_rng(2), hard, hard_fraction=1.0)
    neg = picks[clot[picks] == 0]
    assert len(neg) == 70 and hard[neg].all()                # only hard negatives
    counts = Counter(neg.tolist())
    assert set(counts) == set(np.flatnonzero(hard).tolist())
    assert max(counts.values()) - min(counts.values()) <= 1  # 70 over 6 slices: 11 or 12 each

    picks = choose_sources(clot, 100, 0.3, np.random.default_rng(3), hard, hard_fraction=0.5)
    neg = picks[clot[picks] == 0]
    # 35 drawn from the 6 hard slices, 35 from all 30 negatives (some hard again)
    assert 35 <= int(hard[neg].sum()) <= 35 + 12
    assert len(set(neg[~hard[neg]].tolist())) == 24          # 35 draws over 30 slices reach all 24 easy ones


def test_choose_sources_ignores_hard_flags_on_clot_slices():
    clot, _ = _groups()
    hard = np.ones(clot.size, bool)                          # even clot slices flagged
    picks = choose_sources(clot, 80, 0.25, np.random.default_rng(4), hard, hard_fraction=1.0)
    assert int((clot[picks] > 0).sum()) == 20


def test_choose_sources_without_repeats_when_the_group_is_large():
    clot, hard = _groups(n_pos=50, n_neg=200)
    picks = choose_sources(clot, 60, 0.5, np.random.default_rng(5), hard, hard_fraction=0.0)
    assert len(set(picks.tolist())) == 60


def test_choose_sources_falls_back_when_a_group_is_empty():
    only_neg = np.zeros(12, np.int64)
    picks = choose_sources(only_neg, 30, 0.5, np.random.default_rng(0))
    assert len(picks) == 30 and set(Counter(picks.tolist()).values()) <= {2, 3}
    only_pos = np.arange(1, 9)
    picks = choose_sources(only_pos, 20, 0.1, np.random.default_rng(0))
    assert len(picks) == 20 and (only_pos[picks] > 0).all()
    clot, _ = _groups()
    no_hard = np.zeros(clot.size, bool)
    picks = choose_sources(clot, 40, 0.5, np.random.default_rng(0), no_hard, hard_fraction=1.0)
    assert int((clot[picks] == 0).sum()) == 20               # hard share falls back to all negatives


def test_choose_sources_is_seeded_and_shuffled():
    clot, hard = _groups()
    a = choose_sources(clot, 64, 0.5, np.random.default_rng(9), hard, 0.25)
    b = choose_sources(clot, 64, 0.5, np.random.default_rng(9), hard, 0.25)
    c = choose_sources(clot, 64, 0.5, np.random.default_rng(10), hard, 0.25)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # shuffled: positives are not all at the front
    first_half = (clot[a[:32]] > 0).mean()
    assert 0.2 < first_half < 0.8


def test_choose_sources_per_case_gives_every_clot_case_the_same_share():
    # case A: a long clot on 12 slices, case B: a short one on 2, case C: 4; 10 clot-free slices
    clot = np.array([5] * 12 + [3] * 2 + [7] * 4 + [0] * 10)
    cases = np.array(["A"] * 12 + ["B"] * 2 + ["C"] * 4 + ["A"] * 10)
    by_slice = choose_sources(clot, 120, 0.5, np.random.default_rng(0))
    by_case = choose_sources(clot, 120, 0.5, np.random.default_rng(0), cases=cases)
    for picks in (by_slice, by_case):
        assert int((clot[picks] > 0).sum()) == 60 and int((clot[picks] == 0).sum()) == 60
    slice_share = Counter(cases[by_slice[clot[by_slice] > 0]].tolist())
    case_share = Counter(cases[by_case[clot[by_case] > 0]].tolist())
    # in proportion to the clot's slices: 60 picks over 18 slices, each used 3 or 4 times
    assert 36 <= slice_share["A"] <= 48 and 6 <= slice_share["B"] <= 8 and 12 <= slice_share["C"] <= 16
    assert case_share == {"A": 20, "B": 20, "C": 20}          # the same for every case
    # within a case, its slices are cycled: B's 2 slices 10 times each, C's 4 slices 5 times each
    counts = Counter(by_case[clot[by_case] > 0].tolist())
    assert {counts[i] for i in (12, 13)} == {10} and {counts[i] for i in range(14, 18)} == {5}
    assert set(range(12)) <= set(counts)                       # every slice of A used
    # an uneven split: quotas differ by at most one
    uneven = choose_sources(clot, 20, 0.5, np.random.default_rng(1), cases=cases)
    shares = Counter(cases[uneven[clot[uneven] > 0]].tolist())
    assert sorted(shares.values()) == [3, 3, 4]


# --------------------------------------------------------- the stage itself
def test_stage_draws_positive_and_hard_shares_from_the_sliced_store(tmp_path):
    s = tiny_settings(tmp_path, positive_fraction=0.25, hard_negative_fraction=1.0, aug_p=0.0,
                      clot_appearance_aug=0.0, target_sample_size_aug_train=64)
    write_cohort(s, n=6, shape=(40, 36, 12))
    prepare_data(s, log=quiet, demo_if_empty=False)
    src_rows = read_samples_csv(sliced_dir(s, "Training") / "samples.csv")
    src_images = np.load(sliced_dir(s, "Training") / "images.npy", mmap_mode="r")
    hard = hard_negatives(src_images, src_rows)
    rows = read_samples_csv(augmented_dir(s, "Training") / "samples.csv")
    sources = np.array([int(r["source_sample"]) for r in rows])
    src_clot = np.array([int(r["clot_pixels"]) for r in src_rows])
    assert int((src_clot[sources] > 0).sum()) == 16          # 25% of 64
    assert hard[sources[src_clot[sources] == 0]].all()       # HARD_NEGATIVE_FRACTION 1: all negatives hard
    manifest = read_json(augmented_dir(s, "Training") / "manifest.json")
    assert manifest["n_hard_negative_sources"] == int(hard.sum()) > 0
    assert manifest["n_positive"] == 16

    off = s.replace(hard_negative_fraction=0.0)
    prepare_data(off, log=quiet, demo_if_empty=False)
    assert read_json(augmented_dir(s, "Training") / "manifest.json")["n_hard_negative_sources"] == 0
    rows = read_samples_csv(augmented_dir(s, "Training") / "samples.csv")
    sources = np.array([int(r["source_sample"]) for r in rows])
    negatives = sources[src_clot[sources] == 0]
    assert (~hard[negatives]).any()                          # easy negatives are drawn again

    # POSITIVE_SAMPLING = "case": a new store (another fingerprint), clot samples split by case
    before = read_json(augmented_dir(s, "Training") / "manifest.json")["fingerprint"]
    per_case = off.replace(positive_fraction=0.5)
    prepare_data(per_case, log=quiet, demo_if_empty=False)
    by_slice_print = read_json(augmented_dir(s, "Training") / "manifest.json")["fingerprint"]
    prepare_data(per_case.replace(positive_sampling="case"), log=quiet, demo_if_empty=False)
    manifest = read_json(augmented_dir(s, "Training") / "manifest.json")
    assert manifest["positive_sampling"] == "case" and manifest["fingerprint"] not in (before, by_slice_print)
    rows = read_samples_csv(augmented_dir(s, "Training") / "samples.csv")
    sources = np.array([int(r["source_sample"]) for r in rows])
    src_case = np.array([r["case_id"] for r in src_rows])
    shares = Counter(src_case[sources[src_clot[sources] > 0]].tolist())
    assert sum(shares.values()) == 32 and max(shares.values()) - min(shares.values()) <= 1


# ----------------------------------------------------- augmentation rate
def _unchanged_share(strength, p, n=400):
    t = build_transform(6, p, strength)
    rng = np.random.default_rng(0)
    img = rng.integers(20, 200, (32, 32, 6)).astype(np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:20, 3:6] = 1
    same = 0
    for seed in range(n):
        out, out_mask = augment_one(t, img, mask, [1, 0, 1, seed], None if strength == "standard" else 2,
                                    strength)
        same += np.array_equal(out, img) and np.array_equal(out_mask, mask)
    return same / n


@pytest.mark.parametrize("strength", ["standard", "strong", "domain"])
def test_aug_p_zero_leaves_every_sample_untouched(strength):
    assert _unchanged_share(strength, 0.0, n=60) == 1.0


@pytest.mark.parametrize("strength", ["standard", "strong", "domain"])
def test_augmentation_transforms_about_aug_p_of_the_samples(strength):
    assert 0.42 <= _unchanged_share(strength, 0.5) <= 0.62


def test_domain_augmentation_draws_wider_than_strong():
    """"domain" randomises more: over the same seeds its outputs stray
    further from the input than "strong"'s, and its per-modality shift
    reaches gains and offsets "strong" never draws."""
    rng = np.random.default_rng(0)
    img = rng.integers(60, 160, (32, 32, 2)).astype(np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    spread = {}
    for strength in ("strong", "domain"):
        t = build_transform(2, 1.0, strength)
        spread[strength] = np.mean([np.abs(augment_one(t, img, mask, [2, 0, 1, seed], 2, strength)[0]
                                           .astype(float).mean(axis=(0, 1)) - img.mean(axis=(0, 1))).mean()
                                    for seed in range(200)])
    assert spread["domain"] > 1.3 * spread["strong"], spread
    flat = np.full((2, 2, 2), 128, np.uint8)
    strong = [abs(int(modality_shift(flat, 2, s, "strong")[0, 0, 0]) - 128) for s in range(300)]
    domain = [abs(int(modality_shift(flat, 2, s, "domain")[0, 0, 0]) - 128) for s in range(300)]
    assert max(domain) > max(strong) + 10


def test_modality_shift_moves_all_planes_of_a_modality_together():
    img = np.full((4, 4, 6), 100, np.uint8)
    img[..., 3:] = 60
    moved = 0
    for seed in range(40):
        out = modality_shift(img, 2, seed)
        for m in range(2):
            planes = out[..., 3 * m:3 * m + 3]
            assert np.all(planes == planes[..., :1])         # the three context planes share the shift
        moved += not np.array_equal(out, img)
        # gain 1 +- 0.12 and offset +- 15 codes at most
        assert np.abs(out[..., :3].astype(int) - 100).max() <= 12 + 15 + 1
        assert np.abs(out[..., 3:].astype(int) - 60).max() <= 8 + 15 + 1
    assert 10 <= moved <= 40


@pytest.mark.parametrize("value", ["clot", None, 1])
def test_positive_sampling_is_validated(tmp_path, value):
    with pytest.raises(ConfigError, match="POSITIVE_SAMPLING must be one of"):
        tiny_settings(tmp_path, positive_sampling=value)
