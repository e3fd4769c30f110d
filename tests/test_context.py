"""2.5D context (CONTEXT_SLICES): neighbour gathering, channel layout, volume
edges, one geometry under augmentation, inference, and the augmentation
stage's fingerprint."""

import numpy as np
import pytest

from clotseg.intensity import (
    add_context,
    centre_channels,
    context_positions,
    encode,
    mask_to_samples,
    stack_context,
    store_context_rows,
    volume_to_samples,
)
from clotseg.inference import predict_volume, predict_volume_members
from clotseg.io import read_json
from clotseg.pipeline import prepare_data
from clotseg.stages import augment as augment_stage
from clotseg.stages.augment import augment_key, augment_one, augmented_dir, build_transform
from clotseg.stages.common import read_samples_csv
from clotseg.stages.slicing import sliced_dir
from tests.conftest import quiet, tiny_settings, write_case, write_cohort

WINDOWS = [(-100.0, 600.0), (0.0, 80.0)]


def _z_volume(depth=5, h=4, w=3, modalities=2):
    """(D, H, W, C) samples whose slice z of modality m holds 10 * m + z."""
    z = np.arange(depth)[:, None, None, None]
    m = np.arange(modalities)[None, None, None, :]
    return np.broadcast_to(10 * m + z, (depth, h, w, modalities)).astype(np.uint8).copy()


# ------------------------------------------------------------------ helpers
def test_context_positions_clamp_at_both_edges():
    assert context_positions(5, 1).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]
    # k larger than the volume: every neighbour is clamped into [0, depth - 1]
    assert context_positions(2, 2).tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    assert context_positions(1, 1).tolist() == [[0, 0, 0]]
    assert context_positions(4, 0).tolist() == [[0], [1], [2], [3]]


@pytest.mark.parametrize("k", [1, 2])
def test_add_context_is_modality_major_and_repeats_edge_slices(k):
    depth = 5
    samples = _z_volume(depth)
    out = add_context(samples, k)
    assert out.shape == (depth, 4, 3, 2 * (2 * k + 1)) and out.dtype == np.uint8
    for z in range(depth):
        neighbours = [min(max(z + d, 0), depth - 1) for d in range(-k, k + 1)]
        expected = [10 * m + zz for m in range(2) for zz in neighbours]   # CTA z-k..z+k, then NCCT
        # every pixel of a plane holds the same value
        assert out[z, 1, 2].tolist() == expected, z
        assert np.all(out[z] == out[z, :1, :1])


def test_add_context_k0_is_identity_and_centre_channels_recover_the_slices():
    samples = _z_volume(6, modalities=3)
    assert add_context(samples, 0) is samples
    assert centre_channels(2, 1) == [1, 4]
    assert centre_channels(3, 2) == [2, 7, 12]
    for k in (1, 2, 3):
        ctx = add_context(samples, k)
        np.testing.assert_array_equal(ctx[..., centre_channels(3, k)], samples)


def test_stack_context_keeps_pixels_in_place():
    rng = np.random.default_rng(0)
    gathered = rng.integers(0, 255, (2, 3, 5, 4, 2), dtype=np.uint8)   # (N, 2k+1, H, W, C)
    out = stack_context(gathered)
    assert out.shape == (2, 5, 4, 6)
    for n in range(2):
        for j in range(3):
            for c in range(2):
                np.testing.assert_array_equal(out[n, :, :, c * 3 + j], gathered[n, j, :, :, c])


def test_store_context_rows_stay_in_their_case_whatever_the_row_order():
    # two cases of 4 and 3 slices, rows interleaved and shuffled
    cases = ["A"] * 4 + ["B"] * 3
    slices = [0, 1, 2, 3, 0, 1, 2]
    order = np.random.default_rng(3).permutation(len(cases))
    case_ids = np.array(cases)[order]
    sl = np.array(slices)[order]
    for k in (1, 2):
        rows = store_context_rows(case_ids, sl, k)
        assert rows.shape == (7, 2 * k + 1)
        np.testing.assert_array_equal(rows[:, k], np.arange(7))       # centre: the row itself
        for r in range(7):
            depth = 4 if case_ids[r] == "A" else 3
            assert set(case_ids[rows[r]]) == {case_ids[r]}
            expected = [min(max(sl[r] + d, 0), depth - 1) for d in range(-k, k + 1)]
            assert sl[rows[r]].tolist() == expected, (r, case_ids[r], sl[r])


def test_store_context_rows_k0_is_the_row_itself():
    rows = store_context_rows(["A", "B", "A"], [0, 0, 1], 0)
    assert rows.tolist() == [[0], [1], [2]]


def test_store_context_matches_volume_context():
    """Gathering from a shuffled store of several cases gives the same inputs
    as `add_context` on each volume (what test-time inference feeds)."""
    rng = np.random.default_rng(5)
    vols = {cid: rng.integers(0, 255, (d, 6, 5, 2), dtype=np.uint8) for cid, d in (("X", 5), ("Y", 2), ("Z", 4))}
    rows = [(cid, z) for cid, v in vols.items() for z in range(v.shape[0])]
    perm = rng.permutation(len(rows))
    rows = [rows[i] for i in perm]
    store = np.stack([vols[cid][z] for cid, z in rows])
    k = 2
    ctx = store_context_rows([c for c, _ in rows], [z for _, z in rows], k)
    gathered = stack_context(store[ctx])
    for i, (cid, z) in enumerate(rows):
        np.testing.assert_array_equal(gathered[i], add_context(vols[cid], k)[z])


# ------------------------------------------------------------- augmentation
def _flips(a):
    return {"none": a, "h": a[:, ::-1], "v": a[::-1, :], "hv": a[::-1, ::-1]}


def _l_pattern(size=32):
    mask = np.zeros((size, size), np.uint8)
    mask[4:20, 3:6] = 1
    mask[17:20, 3:15] = 1
    return mask


def _best_flip(plane, mask):
    scores = {k: np.corrcoef(plane.ravel().astype(float), m.ravel().astype(float))[0, 1]
              for k, m in _flips(mask).items()}
    return max(scores, key=scores.get)


def test_augment_one_gives_every_context_plane_the_mask_geometry():
    """An asymmetric L in all six planes (2 modalities x 3 slices, each its
    own brightness): every plane must follow the flip the mask took."""
    t = build_transform(6, p=1.0, strength="standard")
    mask = _l_pattern()
    img = np.full((32, 32, 6), 30, np.uint8)
    for c in range(6):
        img[mask > 0, c] = 120 + 20 * c
    seen = set()
    for seed in range(24):
        a_img, a_mask = augment_one(t, img, mask, [seed, 0, 1, seed])
        flip = [k for k, m in _flips(mask).items() if np.array_equal(m, a_mask)]
        assert len(flip) == 1
        for c in range(6):
            assert _best_flip(a_img[..., c], mask) == flip[0], (seed, c)
        seen.add(flip[0])
    assert len(seen) >= 3   # the flips really happen


@pytest.mark.parametrize("strength", ["strong", "domain"])
def test_strong_augmentation_warps_all_planes_with_the_mask(strength):
    """Affine rotation/scaling under "strong" and "domain": each plane's
    bright region stays on the (nearest-neighbour) warped mask, which stays
    binary."""
    t = build_transform(6, p=1.0, strength=strength)
    mask = np.zeros((48, 48), np.uint8)
    mask[8:34, 10:16] = 1
    mask[28:34, 10:30] = 1
    img = np.full((48, 48, 6), 20, np.uint8)
    for c in range(6):
        img[mask > 0, c] = 180 + 10 * c
    moved = 0
    for seed in range(16):
        a_img, a_mask = augment_one(t, img, mask, [seed, 0, 1, seed], n_modalities=2, strength=strength)
        assert a_img.shape == img.shape and a_mask.shape == mask.shape
        assert set(np.unique(a_mask)) <= {0, 1}
        moved += not any(np.array_equal(m, a_mask) for m in _flips(mask).values())
        if a_mask.sum() < 40:
            continue
        for c in range(6):
            r = np.corrcoef(a_img[..., c].ravel().astype(float), a_mask.ravel().astype(float))[0, 1]
            assert r > 0.6, (seed, c, r)
    assert moved >= 3   # the affine warp really fires


# ---------------------------------------------------------------- inference
class EchoAll:
    """A fake model whose 'probabilities' are its input channels / 255."""

    def __init__(self):
        self.shapes = []

    def predict_on_batch(self, x):
        self.shapes.append(x.shape)
        return x.astype(np.float32) / 255.0


@pytest.mark.parametrize("k", [0, 1, 2])
def test_inference_feeds_context_channels_in_training_order(k):
    depth = 4
    h, w = 6, 5
    # slice z of CTA: 10 z + 5 HU; NCCT: 2 z + 40 HU (distinct codes per slice)
    cta = np.broadcast_to(10.0 * np.arange(depth) + 5.0, (h, w, depth)).astype(np.float32)
    ncct = np.broadcast_to(2.0 * np.arange(depth) + 40.0, (h, w, depth)).astype(np.float32)
    model = EchoAll()
    members = predict_volume_members(model, [cta, ncct], WINDOWS, (8, 8), batch_size=3, context_slices=k)
    assert len(members) == 1
    out = members[0]
    assert out.shape == (h, w, depth, 2 * (2 * k + 1))
    assert {s for s in model.shapes} == {(3, 8, 8, 2 * (2 * k + 1))}
    codes = [encode(cta, WINDOWS[0]), encode(ncct, WINDOWS[1])]
    for z in range(depth):
        for m in range(2):
            for j, d in enumerate(range(-k, k + 1)):
                zz = min(max(z + d, 0), depth - 1)
                np.testing.assert_allclose(out[:, :, z, m * (2 * k + 1) + j], codes[m][:, :, zz] / 255.0,
                                           atol=1e-6)


def test_inference_context_with_flip_tta_agrees_with_plain():
    rng = np.random.default_rng(2)
    vols = [rng.uniform(-100, 600, (10, 7, 5)).astype(np.float32), rng.uniform(0, 80, (10, 7, 5)).astype(np.float32)]
    members = predict_volume_members(EchoAll(), vols, WINDOWS, (16, 16), tta_flips=True, context_slices=1)
    assert len(members) == 3
    for m in members[1:]:
        np.testing.assert_allclose(m, members[0], atol=1e-6)
    mean = predict_volume(EchoAll(), vols, WINDOWS, (16, 16), tta_flips=True, context_slices=1)
    np.testing.assert_allclose(mean, members[0], atol=1e-6)
    # the centre channels are the plain 2D inputs
    plain = predict_volume(EchoAll(), vols, WINDOWS, (16, 16), context_slices=0)
    np.testing.assert_allclose(mean[..., centre_channels(2, 1)], plain, atol=1e-6)


# ------------------------------------------------------- augmentation stage
def test_stage_gathers_neighbours_of_the_same_case(tmp_path):
    """With AUG_P = 0 (and no clot-appearance change) each augmented sample must
    equal the 2.5D input that test-time inference builds from the source volume
    for that slice."""
    s = tiny_settings(tmp_path, context_slices=1, aug_p=0.0, clot_appearance_aug=0.0,
                      target_sample_size_aug_train=60)
    write_cohort(s, n=6, shape=(40, 36, 5))
    prepare_data(s, log=quiet, demo_if_empty=False)
    store = augmented_dir(s, "Training")
    images = np.load(store / "images.npy")
    masks = np.load(store / "masks.npy")
    assert images.shape == (60, 64, 64, 6)
    rows = read_samples_csv(store / "samples.csv")
    expected, expected_masks = {}, {}
    for i, row in enumerate(rows):
        cid, z = row["case_id"], int(row["slice"])
        if cid not in expected:
            cta = np.load(s.volume_path / f"{cid}_CTA_Binary.npy")
            ncct = np.load(s.volume_path / f"{cid}_NCCT_Reg_Binary.npy")
            mask = np.load(s.mask_path / f"{cid}_seg_corrected_binary.npy")
            windows = [s.windows_hu[m] for m in s.modalities]
            expected[cid] = add_context(volume_to_samples([cta, ncct], windows, (64, 64)), 1)
            expected_masks[cid] = mask_to_samples(mask, (64, 64))
        np.testing.assert_array_equal(images[i], expected[cid][z], err_msg=f"sample {i} ({cid} slice {z})")
        np.testing.assert_array_equal(masks[i], expected_masks[cid][z])
    assert {int(r["slice"]) for r in rows} >= {0, 4}   # edge slices were drawn, so clamping was exercised


def test_stage_keeps_one_geometry_for_context_planes_and_mask(tmp_path):
    """A planted L in every slice of both modalities, the mask on the middle
    slices: in every augmented sample, all six planes took one flip, and it
    is the mask's flip when the sample has clot."""
    s = tiny_settings(tmp_path, context_slices=1, aug_p=1.0, augmentation="standard",
                      target_sample_size_aug_train=48)
    shape = (32, 32, 5)
    l2d = _l_pattern(32).astype(bool)
    for cid in range(1, 7):
        cta = np.full(shape, 40.0, np.float32)
        ncct = np.full(shape, 30.0, np.float32)
        cta[l2d] = 400.0
        ncct[l2d] = 70.0
        mask = np.zeros(shape, np.uint8)
        if cid != 6:
            mask[l2d, 1:4] = 1
        write_case(s, cid, shape=shape, cta=cta, ncct=ncct, mask=mask)
    prepare_data(s, log=quiet, demo_if_empty=False)
    store = augmented_dir(s, "Training")
    images = np.load(store / "images.npy")
    masks = np.load(store / "masks.npy")
    padded = np.zeros((64, 64), np.uint8)
    padded[16:48, 16:48] = l2d
    n_clot = 0
    for i in range(len(images)):
        planes = {_best_flip(images[i, ..., c], padded) for c in range(6)}
        assert len(planes) == 1, (i, planes)
        if masks[i].any():
            n_clot += 1
            flip = [k for k, m in _flips(padded).items() if np.array_equal(m, masks[i])]
            assert flip == list(planes), (i, flip, planes)
    assert n_clot >= 10


def test_context_and_transform_changes_rebuild_the_augmented_store(tmp_path, monkeypatch):
    s = tiny_settings(tmp_path, context_slices=1)
    write_cohort(s, n=6)
    prepare_data(s, log=quiet, demo_if_empty=False)
    sliced = read_json(sliced_dir(s, "Training") / "manifest.json")
    key = augment_key(s, "Training", sliced)
    assert augment_key(s, "Training", sliced) == key                            # deterministic
    assert augment_key(s.replace(context_slices=2), "Training", sliced) != key
    assert augment_key(s.replace(augmentation="standard"), "Training", sliced) != key

    msgs = []
    prepare_data(s, log=msgs.append, demo_if_empty=False)
    assert any("[augment Training] up to date" in m for m in msgs), msgs

    # a new transform in the pipeline changes the fingerprint and rebuilds the store
    original = augment_stage.build_transform
    import albumentations as A

    def with_transpose(n_channels, p, strength="standard"):
        t = original(n_channels, p, strength)
        return A.Compose(list(t.transforms) + [A.Transpose(p=0.5)], p=p,
                         additional_targets={f"image{c}": "image" for c in range(1, n_channels)})

    monkeypatch.setattr(augment_stage, "build_transform", with_transpose)
    assert augment_key(s, "Training", sliced) != key
    before = (augmented_dir(s, "Training") / "manifest.json").read_text()
    sliced_mtime = (sliced_dir(s, "Training") / "manifest.json").stat().st_mtime_ns
    msgs = []
    prepare_data(s, log=msgs.append, demo_if_empty=False)
    assert not any("[augment Training] up to date" in m for m in msgs), msgs
    assert any(m.startswith("[augment Training]") and "samples of 6 channels" in m for m in msgs), msgs
    assert (augmented_dir(s, "Training") / "manifest.json").read_text() != before
    assert (sliced_dir(s, "Training") / "manifest.json").stat().st_mtime_ns == sliced_mtime  # slices reused
    msgs = []
    prepare_data(s, log=msgs.append, demo_if_empty=False)
    assert any("[augment Training] up to date" in m for m in msgs), msgs

    # CONTEXT_SLICES = 2: the augmented store is rebuilt with 10 channels, the sliced one is not
    monkeypatch.setattr(augment_stage, "build_transform", original)
    wider = s.replace(context_slices=2)
    msgs = []
    prepare_data(wider, log=msgs.append, demo_if_empty=False)
    assert any("samples of 10 channels" in m for m in msgs), msgs
    assert np.load(augmented_dir(s, "Training") / "images.npy", mmap_mode="r").shape[-1] == 10
    assert read_json(augmented_dir(s, "Training") / "manifest.json")["context_slices"] == 2
    assert (sliced_dir(s, "Training") / "manifest.json").stat().st_mtime_ns == sliced_mtime


def test_panel_samples_carry_context_of_the_validation_slices(tmp_path):
    from clotseg.stages.train import panel_samples

    s = tiny_settings(tmp_path, context_slices=1)
    write_cohort(s, n=6)
    prepare_data(s, log=quiet, demo_if_empty=False)
    images, masks = panel_samples(s, n=4)
    store = sliced_dir(s, "Validation")
    sliced = np.load(store / "images.npy")
    sliced_masks = np.load(store / "masks.npy")
    rows = read_samples_csv(store / "samples.csv")
    assert images.shape[1:] == (64, 64, 6) and images.shape[0] == masks.shape[0] >= 1
    by_key = {(r["case_id"], int(r["slice"])): i for i, r in enumerate(rows)}
    depth = {cid: 1 + max(z for c, z in by_key if c == cid) for cid, _ in by_key}
    for img, msk in zip(images, masks):
        # the panel sample is the slice whose mask and centre planes it shows
        match = [i for i in range(len(sliced)) if np.array_equal(sliced[i], img[..., centre_channels(2, 1)])
                 and np.array_equal(sliced_masks[i], msk)]
        assert match, "panel sample is not a validation slice"
        cid, z = rows[match[0]]["case_id"], int(rows[match[0]]["slice"])
        below = by_key[(cid, max(z - 1, 0))]
        above = by_key[(cid, min(z + 1, depth[cid] - 1))]
        np.testing.assert_array_equal(img[..., [0, 3]], sliced[below])
        np.testing.assert_array_equal(img[..., [2, 5]], sliced[above])
        assert msk.any()   # the panel shows the largest clots first


# ------------------------------------------------------------- slice gaps
# A 2D slice import with gaps (slices 3, 4, 7 of a patient) records
# "slice_gaps" in the case's sidecar: the slice across a gap is not a
# neighbour, so 2.5D context treats the gap as an edge, in training and at
# test time alike.

def test_context_positions_treat_a_gap_as_an_edge():
    # gap after stack index 2: runs 0..2 and 3..6, each clamped on its own
    assert context_positions(7, 1, [2]).tolist() == [
        [0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 4], [3, 4, 5], [4, 5, 6], [5, 6, 6]]
    # every position stays inside its own run, for any k and gap pattern
    for depth, gaps, k in ((9, [0, 4], 2), (6, [1, 2, 3], 1), (5, [], 3), (4, [3, 7], 1)):
        pos = context_positions(depth, k, gaps)
        cuts = sorted({g + 1 for g in gaps if g < depth - 1})
        run = np.searchsorted(cuts, np.arange(depth), side="right")
        assert (run[pos] == run[:, None]).all(), (depth, gaps, k)
        assert (pos[:, k] == np.arange(depth)).all()
    # no gaps (or gaps outside the volume) is the plain clamp
    assert context_positions(5, 1, []).tolist() == context_positions(5, 1).tolist()
    assert context_positions(5, 1, [4, 9]).tolist() == context_positions(5, 1).tolist()


def test_store_context_rows_stay_in_their_run():
    case = ["a"] * 5 + ["b"] * 3
    sl = [0, 1, 2, 3, 4, 0, 1, 2]
    runs = [0, 0, 1, 1, 1, 0, 0, 0]
    rows = store_context_rows(case, sl, 1, runs)
    assert rows.tolist() == [[0, 0, 1], [0, 1, 1], [2, 2, 3], [2, 3, 4], [3, 4, 4],
                             [5, 5, 6], [5, 6, 7], [6, 7, 7]]
    # without runs: one run per case, as before
    assert store_context_rows(case, sl, 1).tolist()[1] == [0, 1, 2]


def test_gapped_case_stage_equals_inference_and_bad_gaps_are_refused(tmp_path):
    """A case whose sidecar records a gap: the sliced store marks its runs,
    every augmented sample (AUG_P = 0) equals the input inference builds
    with the gap, and a malformed slice_gaps is a one-line input error."""
    import json

    from clotseg.cohort import discover_cases
    from clotseg.errors import InputDataError

    s = tiny_settings(tmp_path, context_slices=1, aug_p=0.0, clot_appearance_aug=0.0,
                      target_sample_size_aug_train=80)
    write_cohort(s, n=6, shape=(40, 36, 6))
    for cid in range(1, 7):
        (s.volume_path / f"CS{cid}.json").write_text(json.dumps({"spacing_mm": None, "slice_gaps": [2]}))
    prepare_data(s, log=quiet, demo_if_empty=False)
    sliced = read_samples_csv(sliced_dir(s, "Training") / "samples.csv")
    assert {(int(r["slice"]), int(r["run"])) for r in sliced} == {(0, 0), (1, 0), (2, 0), (3, 1), (4, 1), (5, 1)}
    store = augmented_dir(s, "Training")
    images = np.load(store / "images.npy")
    rows = read_samples_csv(store / "samples.csv")
    windows = [s.windows_hu[m] for m in s.modalities]
    expected = {}
    for i, row in enumerate(rows):
        cid, z = row["case_id"], int(row["slice"])
        if cid not in expected:
            vols = [np.load(s.volume_path / f"{cid}_{m}.npy") for m in ("CTA_Binary", "NCCT_Reg_Binary")]
            expected[cid] = add_context(volume_to_samples(vols, windows, (64, 64)), 1, [2])
        np.testing.assert_array_equal(images[i], expected[cid][z], err_msg=f"sample {i} ({cid} slice {z})")
    assert {int(r["slice"]) for r in rows} >= {2, 3}      # the slices on both sides of the gap were drawn
    # the same planes reach the model at test time: an echo model returns its input's channels
    case = next(c for c in discover_cases(s, require_masks=True, warn=lambda *_: None) if c.case_id == "CS1")
    assert case.slice_gaps() == [2]
    vols = [np.load(p) for p in case.volumes.values()]
    with_gap = add_context(volume_to_samples(vols, windows, (64, 64)), 1, [2])
    without = add_context(volume_to_samples(vols, windows, (64, 64)), 1)
    assert not np.array_equal(with_gap[2], without[2]) and np.array_equal(with_gap[1], without[1])
    got = predict_volume_members(EchoAll(), vols, windows, (64, 64), context_slices=1, slice_gaps=case.slice_gaps())[0]
    np.testing.assert_allclose(np.moveaxis(got, 2, 0), with_gap[:, 12:52, 14:50] / 255.0, atol=1e-6)
    (s.volume_path / "CS1.json").write_text(json.dumps({"slice_gaps": [1.5]}))
    with pytest.raises(InputDataError, match=r"CS1\.json: slice_gaps must be a list of slice indices"):
        case.slice_gaps()


def test_slice_key_follows_the_sidecars_gaps(tmp_path):
    """A changed slice_gaps rebuilds the sliced store (its runs change);
    a sidecar without gaps keeps the key a cohort without sidecars has."""
    import json

    from clotseg.cohort import discover_cases
    from clotseg.stages.slicing import slice_key

    s = tiny_settings(tmp_path)
    write_cohort(s, n=3)

    def key():
        return slice_key(s, discover_cases(s, require_masks=True, warn=lambda *_: None))

    plain = key()
    (s.volume_path / "CS2.json").write_text(json.dumps({"spacing_mm": [0.5, 0.5, 1.0], "slice_gaps": []}))
    assert key() == plain
    (s.volume_path / "CS2.json").write_text(json.dumps({"spacing_mm": [0.5, 0.5, 1.0], "slice_gaps": [2]}))
    gapped = key()
    assert gapped != plain
    (s.volume_path / "CS2.json").write_text(json.dumps({"spacing_mm": [0.5, 0.5, 1.0], "slice_gaps": [3]}))
    assert key() not in (plain, gapped)


@pytest.mark.parametrize("k, symmetry, gaps, windows", [
    (1, False, None, [(0, 600), (0, 200)]), (2, False, [2], [(0, 600), None]), (0, False, None, [(-50, 100)]),
    (1, True, [3], [(0, 600), (0, 200)])])
def test_volume_inputs_equal_the_model_inputs_of_the_slices(k, symmetry, gaps, windows):
    """Test time's one-pass inputs are exactly training's slices -> 2.5D (-> mirror) inputs."""
    from clotseg.intensity import model_inputs, volume_inputs, volume_to_samples

    rng = np.random.default_rng(k)
    vols = [rng.uniform(-300, 900, (30, 20, 7)).astype(np.float32) if w else rng.uniform(-0.2, 1.2, (30, 20, 7))
            for w in windows]
    got = volume_inputs(vols, windows, (40, 36), k, symmetry, gaps)
    want = model_inputs(volume_to_samples(vols, windows, (40, 36)), k, symmetry, gaps)
    assert got.dtype == np.uint8 and got.shape == want.shape == (7, 40, 36, len(vols) * (2 * k + 1) * (1 + symmetry))
    assert np.array_equal(got, want)
