"""SYMMETRY_CHANNELS: every input plane mirrored about the head's midline,
appended after the planes; the same pairing in the augmented training
samples (before the geometry), the per-epoch panel and test-time inference."""

import numpy as np
import pytest

from clotseg.inference import predict_volume_members
from clotseg.intensity import add_context, add_mirror, midline_column, mirror_planes, model_inputs, volume_to_samples
from clotseg.io import read_json
from clotseg.pipeline import prepare_data
from clotseg.stages.augment import augment_key, augment_one, augmented_dir, build_transform, modality_shift
from clotseg.stages.common import read_samples_csv
from clotseg.stages.slicing import sliced_dir
from tests.conftest import quiet, tiny_settings, write_cohort

WINDOWS = [(-100.0, 600.0), (0.0, 200.0)]


def _head(h=12, w=16, left=3, right=11):
    """(H, W) uint8: tissue (code 50) in columns left..right-1, air (0) elsewhere."""
    plane = np.zeros((h, w), np.uint8)
    plane[:, left:right] = 50
    return plane


def test_midline_is_the_mean_tissue_column_or_the_centre():
    assert midline_column(_head(left=3, right=11)) == pytest.approx(6.5)
    assert midline_column(_head(left=6, right=16)) == pytest.approx(10.5)     # an off-centre head
    assert midline_column(np.zeros((12, 16), np.uint8)) == pytest.approx(7.5)   # no tissue: the image centre
    # a bright vessel on one side does not move the midline: tissue counts, not intensity
    plane = _head()
    plane[4, 4] = 255
    assert midline_column(plane) == pytest.approx(6.5)


def test_mirror_maps_each_column_to_its_counterpart():
    sample = np.zeros((4, 16, 2), np.uint8)
    sample[1, 4, 0] = 200          # left of the midline 6.5 ...
    sample[2, 12, 1] = 90          # ... and a column whose counterpart (1) exists
    out = mirror_planes(sample, 6.5)
    assert out[1, 9, 0] == 200 and out[..., 0].sum() == 200
    assert out[2, 1, 1] == 90
    # column j takes column 13 - j; columns whose counterpart falls outside the image get 0
    full = np.random.default_rng(1).integers(1, 255, (4, 16, 2), dtype=np.uint8)
    out = mirror_planes(full, 6.5)
    np.testing.assert_array_equal(out[:, :14], full[:, 13::-1])
    assert not out[:, 14:].any()
    np.testing.assert_array_equal(mirror_planes(out, 6.5)[:, :14], full[:, :14])   # twice: back


def test_add_mirror_appends_the_mirrored_planes_after_the_planes():
    rng = np.random.default_rng(0)
    x = np.zeros((3, 12, 16, 6), np.uint8)                 # 2 modalities x 3 context planes
    x[..., 3:11, :] = rng.integers(1, 255, (3, 12, 8, 6), dtype=np.uint8)   # the head: columns 3..10
    out = add_mirror(x, 1)
    assert out.shape == (3, 12, 16, 12) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., :6], x)
    for i in range(3):
        # the head spans columns 3..10, midline 6.5: its mirror is its own columns reversed
        np.testing.assert_array_equal(out[i, :, 3:11, 6:], x[i, :, 10:2:-1, :])
        assert not out[i, :, 11:, 6:].any() and not out[i, :, :3, 6:].any()
    plain = np.ascontiguousarray(x[..., [1, 4]])           # (D, H, W, C) slices of one volume
    np.testing.assert_array_equal(model_inputs(plain, 1, symmetry=False), add_context(plain, 1))
    np.testing.assert_array_equal(model_inputs(plain, 1, symmetry=True), add_mirror(add_context(plain, 1), 1))


def test_mirrored_modalities_share_their_source_shift():
    image = np.full((8, 8, 8), 100, np.uint8)              # 2 modalities x 2 planes, then their mirrors
    image[..., 2:4] = 60
    image[..., 6:8] = 60
    for seed in range(20):
        out = modality_shift(image, 2, seed, "strong", mirrored=True).astype(int)
        np.testing.assert_array_equal(out[..., :4], out[..., 4:])


def test_augment_one_mirrors_before_the_geometry():
    """Augmenting with mirror_k equals mirroring first and then augmenting
    the four planes with the same seed: the geometry (rotation, shift,
    flips) moves a plane and its mirror together, so every pixel keeps its
    anatomical counterpart."""
    h = w = 32
    rng = np.random.default_rng(3)
    image = np.zeros((h, w, 2), np.uint8)
    image[4:28, 6:26, :] = rng.integers(30, 60, (24, 20, 2), dtype=np.uint8)   # head centred on 15.5
    image[10, 9, :] = 250                                                      # a vessel on one side only
    mask = np.zeros((h, w), np.uint8)
    mask[9:12, 8:11] = 1
    premirrored = add_mirror(image[None], 0)[0]
    for strength in ("standard", "strong"):     # "strong": + rotation, scaling, shift
        transform = build_transform(4, 1.0, strength)
        for seed in range(4):
            out, out_mask = augment_one(transform, image, mask, [seed], None, strength, mirror_k=0)
            ref, ref_mask = augment_one(transform, premirrored, mask, [seed], None, strength)
            assert out.shape == (h, w, 4)
            np.testing.assert_array_equal(out, ref)
            np.testing.assert_array_equal(out_mask, ref_mask)
    plain, _ = augment_one(build_transform(4, 0.0, "standard"), image, mask, [0], mirror_k=0)
    np.testing.assert_array_equal(plain, premirrored)


def test_stage_and_inference_build_the_same_mirrored_inputs(tmp_path):
    """With AUG_P = 0 (and no clot-appearance change) each augmented sample
    equals the input that test-time inference builds for that slice, mirrored
    planes included."""
    s = tiny_settings(tmp_path, context_slices=1, symmetry_channels=True, aug_p=0.0, clot_appearance_aug=0.0,
                      target_sample_size_aug_train=40)
    assert s.model_channels == 12 and s.model_input_shape == (64, 64, 12)
    write_cohort(s, n=6, shape=(40, 36, 5))
    prepare_data(s, log=quiet, demo_if_empty=False)
    store = augmented_dir(s, "Training")
    images = np.load(store / "images.npy")
    assert images.shape == (40, 64, 64, 12)
    assert read_json(store / "manifest.json")["symmetry_channels"] is True
    rows = read_samples_csv(store / "samples.csv")
    windows = [s.windows_hu[m] for m in s.modalities]
    for i, row in enumerate(rows):
        cid, z = row["case_id"], int(row["slice"])
        vols = [np.load(s.volume_path / f"{cid}_CTA_Binary.npy"), np.load(s.volume_path / f"{cid}_NCCT_Reg_Binary.npy")]
        expected = model_inputs(volume_to_samples(vols, windows, (64, 64)), 1, symmetry=True)
        np.testing.assert_array_equal(images[i], expected[z], err_msg=f"sample {i}")

    class Echo:
        def predict_on_batch(self, x):
            return x.astype(np.float32) / 255.0

    cid = rows[0]["case_id"]
    vols = [np.load(s.volume_path / f"{cid}_CTA_Binary.npy"), np.load(s.volume_path / f"{cid}_NCCT_Reg_Binary.npy")]
    members = predict_volume_members(Echo(), vols, windows, (64, 64), context_slices=1, symmetry=True)
    assert members[0].shape == (40, 36, 5, 12)

    from clotseg.stages.train import panel_samples
    panel, _ = panel_samples(s, n=2)
    assert panel.shape[-1] == 12
    np.testing.assert_array_equal(panel[..., 6:], add_mirror(panel[..., :6], 1)[..., 6:])

    sliced = read_json(sliced_dir(s, "Training") / "manifest.json")
    assert augment_key(s, "Training", sliced) != augment_key(s.replace(symmetry_channels=False), "Training", sliced)


@pytest.mark.slow
def test_a_symmetry_run_trains_tests_and_reloads(tmp_path):
    """End to end at tiny size: training with SYMMETRY_CHANNELS saves a
    12-channel model that testing loads in safe mode and scores."""
    from clotseg.stages.evaluate import run_evaluation
    from clotseg.stages.train import run_training

    s = tiny_settings(tmp_path, context_slices=1, symmetry_channels=True, epochs=1)
    write_cohort(s, n=8)
    prepare_data(s, log=quiet, demo_if_empty=False)
    run = run_training(s, log=quiet)
    assert read_json(run / "run.json")["epochs_done"] == 1
    summary = run_evaluation(s, run_name=run.name, log=quiet)
    assert summary["metrics_clot_cases"]["dice"]["n"] >= 1
