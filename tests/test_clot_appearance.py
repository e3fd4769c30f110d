"""CLOT_APPEARANCE_AUG: label-preserving changes of the clot's own intensity."""

import numpy as np
import pytest

from clotseg.errors import ConfigError
from clotseg.io import read_json
from clotseg.pipeline import prepare_data
from clotseg.settings import Settings
from clotseg.stages.augment import (augment_key, augment_one, augmented_dir, build_transform, clot_appearance,
                                    clot_appearance_codes)
from clotseg.layout import sliced_dir
from clotseg.stages.common import read_samples_csv
from tests.conftest import quiet, tiny_settings, write_cohort

OFFSETS_HU = {"NCCT": (-30.0, 10.0), "CTA": (-20.0, 60.0)}
CODES = clot_appearance_codes(["CTA", "NCCT"], {"CTA": (-100.0, 600.0), "NCCT": (0.0, 200.0)}, OFFSETS_HU)


def _sample(planes=1, shape=(32, 32)):
    img = np.full((*shape, 2 * planes), 120, np.uint8)
    mask = np.zeros(shape, np.uint8)
    mask[12:16, 10:18] = 1
    return img, mask


def test_codes_are_the_hu_ranges_in_each_modalitys_window():
    (cta_lo, cta_hi), (nc_lo, nc_hi) = CODES
    assert (cta_lo, cta_hi) == pytest.approx((-20 * 255 / 700, 60 * 255 / 700))
    assert (nc_lo, nc_hi) == pytest.approx((-30 * 255 / 200, 10 * 255 / 200))
    # a modality without a range, or without an HU window (normalised input), is left alone
    assert clot_appearance_codes(["CTA", "MRI", "NCCT"], {"CTA": None, "MRI": (0, 1), "NCCT": (0, 200)},
                                 OFFSETS_HU)[:2] == [None, None]
    # the settings' default moves the NCCT alone, by the range above
    assert Settings().clot_appearance_hu == {"NCCT": OFFSETS_HU["NCCT"]}


def test_only_the_clot_and_its_soft_edge_change_within_the_range():
    img, mask = _sample()
    far = np.ones_like(mask, bool)
    far[9:19, 7:21] = False                 # more than 3 pixels from the clot
    moved = set()
    for seed in range(60):
        out = clot_appearance(img, mask, CODES, seed)
        assert np.array_equal(out[far], img[far])
        for m, (lo, hi) in enumerate(CODES):
            d = out[..., m].astype(int) - img[..., m]
            assert np.floor(lo) - 1 <= d.min() and d.max() <= np.ceil(hi) + 1
            if d.any():
                moved.add(m)
                centre = d[13, 13]
                assert abs(centre) >= np.abs(d).max() - 1          # the clot's core moves most
                assert np.abs(d[mask == 0]).max() < abs(centre) + 1
    assert moved == {0, 1}                                          # both modalities get moved sometimes
    assert np.array_equal(clot_appearance(img, mask, CODES, 5), clot_appearance(img, mask, CODES, 5))


def test_every_context_plane_moves_through_its_own_mask_by_its_modalitys_offset():
    img, _ = _sample(planes=3)
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[0, 12:16, 10:14] = 1             # the clot ends here: smaller in the plane below
    masks[1, 12:16, 10:18] = 1             # the centre plane
    # plane 2: past the clot's end, nothing to move
    assert np.array_equal(clot_appearance(img, np.zeros_like(masks), CODES, 1), img)
    moved = 0
    for seed in range(40):
        out = clot_appearance(img, masks, CODES, seed)
        d = out.astype(int) - img
        for m in range(2):                 # modality-major: planes m*3 .. m*3+2
            below, centre, above = d[..., 3 * m], d[..., 3 * m + 1], d[..., 3 * m + 2]
            assert not above.any()
            # one offset per modality: the cores of both planes move alike
            assert abs(int(below[13, 11]) - int(centre[13, 11])) <= 1
            assert not below[:, 16:].any() or abs(below[:, 16:]).max() <= 1   # not where only the centre has clot
            moved += bool(centre.any())
    assert moved > 10
    with pytest.raises(ValueError, match="one mask per context plane"):
        clot_appearance(img, masks[1], CODES, 0)     # the centre mask alone does not say where the others' clot is


def test_augment_one_takes_the_context_planes_masks():
    img, _ = _sample(planes=3)
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[:, 12:16, 10:18] = 1
    none = build_transform(6, 0.0)
    changed_context = 0
    for seed in range(40):
        out, out_mask = augment_one(none, img, masks[1], [3, 0, 1, seed], 2, "strong", (1.0, CODES),
                                    plane_masks=masks)
        assert np.array_equal(out_mask, masks[1])
        changed_context += bool((out[..., [0, 2, 3, 5]] != img[..., [0, 2, 3, 5]]).any())
    assert changed_context > 10


def test_augment_one_applies_it_with_its_probability_and_keeps_the_mask():
    img, mask = _sample()
    none = build_transform(2, 0.0)          # the rest of the augmentation off
    changed = 0
    for seed in range(200):
        out, out_mask = augment_one(none, img, mask, [3, 0, 1, seed], 2, "strong", (0.5, CODES))
        assert np.array_equal(out_mask, mask)
        changed += not np.array_equal(out, img)
    # p 0.5, then each modality with 1/2: about 0.5 * 0.75 of the samples change
    assert 50 <= changed <= 100
    # off, or on a clot-free sample: exactly what augment_one did before
    t = build_transform(2, 1.0, "strong")
    for seed in range(20):
        base = augment_one(t, img, mask, [3, 0, 1, seed], 2, "strong")
        assert all(np.array_equal(a, b) for a, b in
                   zip(base, augment_one(t, img, mask, [3, 0, 1, seed], 2, "strong", (0.0, CODES))))
        empty = np.zeros_like(mask)
        assert all(np.array_equal(a, b) for a, b in
                   zip(augment_one(t, img, empty, [3, 0, 1, seed], 2, "strong"),
                       augment_one(t, img, empty, [3, 0, 1, seed], 2, "strong", (1.0, CODES))))


def test_setting_is_validated_and_rebuilds_the_augmented_samples(tmp_path):
    with pytest.raises(ConfigError, match="CLOT_APPEARANCE_AUG"):
        Settings.from_dict({"CLOT_APPEARANCE_AUG": 1.5}, root=tmp_path).validate()
    s = tiny_settings(tmp_path, aug_p=0.0, positive_fraction=1.0, target_sample_size_aug_train=32,
                      clot_appearance_aug=0.0)
    write_cohort(s, n=6, shape=(40, 36, 12))
    prepare_data(s, log=quiet, demo_if_empty=False)
    plain = np.load(augmented_dir(s, "Training") / "images.npy")
    on = s.replace(clot_appearance_aug=1.0)
    sliced = {c: read_json(sliced_dir(s, c) / "manifest.json") for c in ("Training", "Validation")}
    assert augment_key(on, "Training", sliced["Training"]) != augment_key(s, "Training", sliced["Training"])
    prepare_data(on, log=quiet, demo_if_empty=False)
    looked = np.load(augmented_dir(s, "Training") / "images.npy")
    masks = np.load(augmented_dir(s, "Training") / "masks.npy")
    rows = read_samples_csv(augmented_dir(s, "Training") / "samples.csv")
    assert len(rows) == 32 and masks.reshape(32, -1).any(axis=1).all()
    diff = looked.astype(int) - plain
    assert diff.any()
    # what moved sits on the clot (the mask, dilated by the soft edge), nowhere else
    from scipy.ndimage import binary_dilation
    near = np.stack([binary_dilation(m > 0, iterations=3) for m in masks])
    assert not diff[~near].any()


def test_the_stage_moves_each_context_plane_through_that_slices_mask(tmp_path):
    """With CONTEXT_SLICES = 1 the neighbouring planes change too, each only
    around the clot of its own source slice (the sliced store's mask)."""
    from scipy.ndimage import binary_dilation

    from clotseg.intensity import store_context_rows
    from clotseg.stages.common import store_runs

    s = tiny_settings(tmp_path, aug_p=0.0, positive_fraction=1.0, target_sample_size_aug_train=32,
                      clot_appearance_aug=0.0, context_slices=1)
    write_cohort(s, n=6, shape=(40, 36, 12))
    prepare_data(s, log=quiet, demo_if_empty=False)
    plain = np.load(augmented_dir(s, "Training") / "images.npy")
    prepare_data(s.replace(clot_appearance_aug=1.0), log=quiet, demo_if_empty=False)
    looked = np.load(augmented_dir(s, "Training") / "images.npy")
    rows = read_samples_csv(augmented_dir(s, "Training") / "samples.csv")
    src_rows = read_samples_csv(sliced_dir(s, "Training") / "samples.csv")
    src_masks = np.load(sliced_dir(s, "Training") / "masks.npy")
    context = store_context_rows([r["case_id"] for r in src_rows], [int(r["slice"]) for r in src_rows], 1,
                                 store_runs(src_rows))
    diff = looked.astype(int) - plain
    assert diff.shape[-1] == 6
    moved_context = 0
    for i, row in enumerate(rows):
        for p, src in enumerate(context[int(row["source_sample"])]):
            near = binary_dilation(src_masks[src] > 0, iterations=3)
            for m in range(2):
                plane = diff[i, ..., 3 * m + p]
                assert not plane[~near].any()
                moved_context += p != 1 and bool(plane.any())
    assert moved_context > 0


def test_offsets_are_a_validated_setting_and_one_modality_can_be_left_alone(tmp_path):
    """CLOT_APPEARANCE_HU without CTA moves the clot on NCCT only; the augmented
    store is rebuilt when the ranges change."""
    for bad in ({"NCCT": (10.0, -30.0)}, {"NCCT": (-30.0,)}, {"NCCT": ("a", 1)}, [(-30, 10)]):
        with pytest.raises(ConfigError, match="CLOT_APPEARANCE_HU"):
            Settings.from_dict({"CLOT_APPEARANCE_HU": bad}, root=tmp_path).validate()
    with pytest.raises(ConfigError, match="CLOT_APPEARANCE_HU.*names no modality"):
        Settings.from_dict({"CLOT_APPEARANCE_AUG": 0.5, "CLOT_APPEARANCE_HU": {"ncct": (-30.0, 10.0)}},
                           root=tmp_path).validate()
    # the default's names need not match a user's modalities, on or off: they are left alone
    single = {"MODALITY_PATTERNS": {"CT": "CS<ID>_CT.npy"}, "WINDOWS_HU": {"CT": (0.0, 80.0)},
              "INPUT_SHAPE": (256, 256, 1)}
    for aug in (0.0, 0.5):
        s = Settings.from_dict({**single, "CLOT_APPEARANCE_AUG": aug}, root=tmp_path)
        s.validate()
        assert clot_appearance_codes(s.modalities, s.windows_hu, s.clot_appearance_hu) == [None]

    s = tiny_settings(tmp_path, aug_p=0.0, positive_fraction=1.0, target_sample_size_aug_train=32,
                      clot_appearance_aug=0.0)
    write_cohort(s, n=6, shape=(40, 36, 12))
    prepare_data(s, log=quiet, demo_if_empty=False)
    plain = np.load(augmented_dir(s, "Training") / "images.npy")
    both = s.replace(clot_appearance_aug=1.0, clot_appearance_hu=OFFSETS_HU)
    ncct = both.replace(clot_appearance_hu={"NCCT": (-30.0, 10.0)})
    sliced = read_json(sliced_dir(s, "Training") / "manifest.json")
    assert augment_key(ncct, "Training", sliced) != augment_key(both, "Training", sliced)
    prepare_data(ncct, log=quiet, demo_if_empty=False)
    diff = np.load(augmented_dir(s, "Training") / "images.npy").astype(int) - plain
    cta, nc = s.modalities.index("CTA"), s.modalities.index("NCCT")
    planes = diff.shape[-1] // 2
    assert not diff[..., cta * planes:(cta + 1) * planes].any()
    assert diff[..., nc * planes:(nc + 1) * planes].any()
