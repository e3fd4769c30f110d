"""SYNTHETIC_CLOT_AUG: clots drawn into the opacified arteries of clot-free slices."""

import numpy as np
import pytest

from clotseg import synthetic_clots
from clotseg.errors import ConfigError
from clotseg.intensity import encode
from clotseg.io import read_json
from clotseg.pipeline import prepare_data
from clotseg.settings import Settings
from clotseg.stages.augment import augment_key, augment_one, augmented_dir, build_transform
from clotseg.stages.common import read_samples_csv
from clotseg.stages.slicing import sliced_dir
from clotseg.synthetic_clots import (BLOOD_NCCT_HU, CLOT_NCCT_OFFSET_HU, PERVIOUS_HU, insert_clot, lumen_mask,
                                     lumen_slices)
from tests.conftest import quiet, tiny_settings, write_case, write_cohort

WINDOWS = [(-100.0, 600.0), (0.0, 200.0)]       # CTA, NCCT (the defaults)


def _plane(h=32, w=32, lumen=((10, 14), (6, 26)), bone=True, seed=0):
    """One (h, w) CTA and NCCT in HU: tissue 35 HU, a horizontal artery
    (CTA 300 HU, NCCT 41 HU) over `lumen` rows/cols, and a skull edge
    (1000 HU on both) in the first two rows."""
    rng = np.random.default_rng(seed)
    cta = 35.0 + rng.normal(0, 3, (h, w))
    ncct = 35.0 + rng.normal(0, 2, (h, w))
    if lumen is not None:
        (r0, r1), (c0, c1) = lumen
        cta[r0:r1, c0:c1], ncct[r0:r1, c0:c1] = 300.0, 41.0
    if bone:
        cta[:2], ncct[:2] = 1000.0, 1000.0
    return cta, ncct


def _sample(planes_hu):
    """(H, W, 2 x planes) uint8 codes, modality-major, from [(cta, ncct), ...] per plane."""
    ctas = [encode(c, WINDOWS[0]) for c, _ in planes_hu]
    nccts = [encode(n, WINDOWS[1]) for _, n in planes_hu]
    return np.stack(ctas + nccts, axis=-1)


def test_lumen_is_the_opacified_artery_not_bone_or_calcium():
    cta, ncct = _plane()
    cta[20, 20], ncct[20, 20] = 400.0, 400.0           # calcium: bright on both scans
    lumen = lumen_mask(encode(cta, WINDOWS[0]), WINDOWS[0], encode(ncct, WINDOWS[1]), WINDOWS[1])
    expected = np.zeros_like(lumen)
    expected[10:14, 6:26] = True
    assert np.array_equal(lumen, expected)
    # without an NCCT the CTA alone decides: calcium under 550 HU then counts
    assert lumen_mask(encode(cta, WINDOWS[0]), WINDOWS[0])[20, 20]


@pytest.mark.parametrize("seed", range(6))
def test_the_clot_fills_the_artery_with_clot_attenuation(seed):
    image = _sample([_plane()])
    out, masks = insert_clot(image, WINDOWS, 0, 1, seed)
    assert out.shape == image.shape and out.dtype == np.uint8 and masks.shape == (1, 32, 32)
    clot = masks[0] > 0
    assert clot.sum() >= 3
    assert clot[10:14, 6:26].sum() == clot.sum()           # inside the artery only
    hu_cta = out[..., 0].astype(float) * 700 / 255 - 100
    hu_ncct = out[..., 1].astype(float) * 200 / 255
    core = clot.copy()
    lo = BLOOD_NCCT_HU + CLOT_NCCT_OFFSET_HU[0] + PERVIOUS_HU[0]
    hi = BLOOD_NCCT_HU + CLOT_NCCT_OFFSET_HU[1] + PERVIOUS_HU[1]
    # a filling defect: far below the 300 HU lumen, within the clot's range (plus the drawn noise)
    assert lo - 40 < np.median(hu_cta[core]) < hi + 40 and hu_cta[core].max() < 200
    shift = np.median(hu_ncct[core]) - 41.0
    assert CLOT_NCCT_OFFSET_HU[0] - 4 <= shift <= CLOT_NCCT_OFFSET_HU[1] + 4
    # far from the clot nothing changed (the soft edge reaches a few pixels)
    rows, cols = np.nonzero(clot)
    far = np.ones_like(clot)
    far[max(rows.min() - 4, 0):rows.max() + 5, max(cols.min() - 4, 0):cols.max() + 5] = False
    assert np.array_equal(out[far], image[far])
    # the same seed, the same clot; the bone rows never change
    again, masks2 = insert_clot(image, WINDOWS, 0, 1, seed)
    assert np.array_equal(again, out) and np.array_equal(masks2, masks)
    assert np.array_equal(out[:2], image[:2])


def test_clots_differ_between_seeds_and_without_lumen_nothing_changes():
    image = _sample([_plane()])
    looks = {insert_clot(image, WINDOWS, 0, 1, s)[1].tobytes() for s in range(8)}
    assert len(looks) > 4
    bare = _sample([_plane(lumen=None)])
    out, masks = insert_clot(bare, WINDOWS, 0, 1, 0)
    assert np.array_equal(out, bare) and not masks.any()


def test_the_clot_runs_into_context_planes_only_where_the_artery_does():
    with_artery, without = _plane(seed=1), _plane(lumen=None, seed=2)
    image = _sample([without, _plane(seed=3), with_artery])     # planes: above, centre, below
    seen_below = False
    for seed in range(12):
        out, masks = insert_clot(image, WINDOWS, 0, 1, seed)
        assert masks[1].any() and not masks[0].any()            # the plane above has no artery
        assert np.array_equal(out[..., 0], image[..., 0])       # nor any change
        seen_below |= bool(masks[2].any())
        if masks[2].any():
            assert masks[2][10:14, 6:26].sum() == masks[2].sum()
    assert seen_below


def test_augment_one_gives_the_synthetic_clot_its_mask(tmp_path):
    image = _sample([_plane()])
    empty = np.zeros((32, 32), np.uint8)
    t = build_transform(2, 0.0)                               # no transform: the insertion alone
    img, mask = augment_one(t, image, empty, [1, 0, 1, 5], synthetic=(WINDOWS, 0, 1))
    assert mask.any() and not np.array_equal(img, image)
    plain_img, plain_mask = augment_one(t, image, empty, [1, 0, 1, 5])
    assert np.array_equal(plain_img, image) and not plain_mask.any()


def test_stage_turns_the_share_of_clot_samples_into_synthetic_ones(tmp_path):
    with pytest.raises(ConfigError, match="SYNTHETIC_CLOT_AUG"):
        Settings.from_dict({"SYNTHETIC_CLOT_AUG": 1.5}, root=tmp_path).validate()
    single = {"MODALITY_PATTERNS": {"CT": "CS<ID>_CT.npy"}, "WINDOWS_HU": {"CT": (0.0, 80.0)},
              "INPUT_SHAPE": (256, 256, 1)}
    with pytest.raises(ConfigError, match="SYNTHETIC_CLOT_AUG.*CTA"):
        Settings.from_dict({**single, "SYNTHETIC_CLOT_AUG": 0.5}, root=tmp_path).validate()
    Settings.from_dict({**single, "SYNTHETIC_CLOT_AUG": 0.0}, root=tmp_path).validate()

    s = tiny_settings(tmp_path, aug_p=0.0, positive_fraction=0.5, target_sample_size_aug_train=40,
                      clot_appearance_aug=0.0, hard_negative_fraction=0.0)
    write_cohort(s, n=6, shape=(40, 36, 12))
    prepare_data(s, log=quiet, demo_if_empty=False)
    src_rows = read_samples_csv(sliced_dir(s, "Training") / "samples.csv")
    src_clot = np.array([int(r["clot_pixels"]) for r in src_rows])
    before = {c: read_json(augmented_dir(s, c) / "manifest.json") for c in ("Training", "Validation")}
    assert before["Training"]["n_synthetic"] == 0

    on = s.replace(synthetic_clot_aug=0.5)
    sliced = {c: read_json(sliced_dir(s, c) / "manifest.json") for c in ("Training", "Validation")}
    assert augment_key(on, "Training", sliced["Training"]) != before["Training"]["fingerprint"]
    assert augment_key(on, "Validation", sliced["Validation"]) == before["Validation"]["fingerprint"]
    prepare_data(on, log=quiet, demo_if_empty=False)
    manifest = read_json(augmented_dir(s, "Training") / "manifest.json")
    assert manifest["n_synthetic"] == 10                          # half of the 20 clot samples
    assert manifest["n_positive"] == 20                           # every synthetic sample holds its clot
    rows = read_samples_csv(augmented_dir(s, "Training") / "samples.csv")
    sources = np.array([int(r["source_sample"]) for r in rows])
    with_clot = np.array([int(r["clot_pixels"]) > 0 for r in rows])
    assert int((src_clot[sources] > 0).sum()) == 10               # the real clot samples left
    assert int((with_clot & (src_clot[sources] == 0)).sum()) == 10  # clot-free sources, clot drawn in
    src_images = np.load(sliced_dir(s, "Training") / "images.npy", mmap_mode="r")
    windows = [s.windows_hu["CTA"], s.windows_hu["NCCT"]]
    assert lumen_slices(src_images, src_clot, windows, 0, 1)[sources[with_clot & (src_clot[sources] == 0)]].all()
    # validation keeps its real clots only
    assert read_json(augmented_dir(s, "Validation") / "manifest.json")["fingerprint"] == \
        before["Validation"]["fingerprint"]


def test_a_changed_range_rebuilds_and_the_log_says_how_many_are_synthetic(tmp_path, monkeypatch):
    s = tiny_settings(tmp_path, aug_p=0.0, positive_fraction=0.5, target_sample_size_aug_train=40,
                      clot_appearance_aug=0.0, hard_negative_fraction=0.0, synthetic_clot_aug=0.5)
    write_cohort(s, n=6, shape=(40, 36, 12))
    lines = []
    prepare_data(s, log=lambda *a, **k: lines.append(" ".join(map(str, a))), demo_if_empty=False)
    assert any("[augment Training]" in line and "10 of them synthetic" in line for line in lines)
    assert not any("[augment Validation]" in line and "synthetic" in line for line in lines)
    sliced = read_json(sliced_dir(s, "Training") / "manifest.json")
    key = augment_key(s, "Training", sliced)
    monkeypatch.setattr(synthetic_clots, "PERVIOUS_HU", (0.0, 10.0))
    assert augment_key(s, "Training", sliced) != key
    # a cohort whose CTA shows no lumen: the log says why no sample is synthetic
    dark = tiny_settings(tmp_path / "dark", aug_p=0.0, positive_fraction=0.5, target_sample_size_aug_train=40,
                         clot_appearance_aug=0.0, hard_negative_fraction=0.0, synthetic_clot_aug=0.5)
    for cid in range(1, 7):
        cta = np.full((40, 36, 12), 35.0, np.float32)
        mask = np.zeros((40, 36, 12), np.uint8)
        mask[10:14, 10:14, 4:8] = 1
        cta[mask > 0] = 80.0
        write_case(dark, cid, shape=(40, 36, 12), cta=cta, mask=mask)
    lines.clear()
    prepare_data(dark, log=lambda *a, **k: lines.append(" ".join(map(str, a))), demo_if_empty=False)
    assert any("0 of them synthetic (SYNTHETIC_CLOT_AUG: no clot-free slice shows opacified lumen)" in line
               for line in lines)
