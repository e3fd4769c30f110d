"""Patch training (PATCH_SIZE): the generator's crops, the setting's checks,
and a run that trains on patches but saves a whole-slice model."""

import numpy as np
import pytest

from clotseg.errors import ConfigError
from clotseg.pipeline import prepare_data
from clotseg.stages.evaluate import load_model
from clotseg.stages.train import run_training
from myModels.DataGeneratorUNet2D import DataGeneratorUNet2D
from tests.conftest import quiet, tiny_settings, write_cohort


def _store(n=12, h=40, w=48, seed=0):
    """(images, masks): every even sample has a small clot somewhere, odd ones none.
    Channel 0 holds the pixel's row, channel 1 its column, so a crop's
    position can be read back from its values."""
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    images = np.repeat(np.stack([rows, cols], -1)[None].astype(np.uint8), n, 0)
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(0, n, 2):
        r, c = rng.integers(0, h - 3), rng.integers(0, w - 3)
        masks[i, r:r + 3, c:c + 3] = 1
    return images, masks


def test_patches_have_the_patch_shape_and_every_clot_slice_keeps_its_clot():
    images, masks = _store()
    gen = DataGeneratorUNet2D(images, masks, batch_size=4, shuffle=False, patch_size=(16, 24))
    seen_positive = 0
    for b in range(len(gen)):
        x, y = gen[b]
        assert x.shape == (len(y), 16, 24, 2) and y.shape == (len(y), 16, 24, 1)
        rows = gen.order[b * 4:(b + 1) * 4]
        for xi, yi, row in zip(x, y, rows):
            has_clot = masks[row].any()
            assert yi.any() == has_clot          # the clot slice's patch always holds clot
            seen_positive += has_clot
            # the patch is a window of the slice: its mask is the slice's mask at that window
            top, left = int(xi[0, 0, 0]), int(xi[0, 0, 1])
            np.testing.assert_array_equal(yi[..., 0], masks[row, top:top + 16, left:left + 24])
    assert seen_positive == 6


def test_patch_positions_are_reproducible_per_epoch_and_vary_between_epochs():
    images, masks = _store(n=8)
    a = DataGeneratorUNet2D(images, masks, batch_size=8, shuffle=False, seed=3, patch_size=(16, 16))
    b = DataGeneratorUNet2D(images, masks, batch_size=8, shuffle=False, seed=3, patch_size=(16, 16))
    xa, _ = a[0]
    xb, _ = b[0]
    np.testing.assert_array_equal(xa, xb)
    a.on_epoch_end()
    xa2, _ = a[0]
    assert not np.array_equal(xa, xa2)


def test_clot_is_not_always_at_the_patch_centre():
    images = np.zeros((1, 64, 64, 2), np.uint8)
    masks = np.zeros((1, 64, 64), np.uint8)
    masks[0, 30, 30] = 1
    gen = DataGeneratorUNet2D(images, masks, batch_size=1, shuffle=False, patch_size=(16, 16))
    where = set()
    for epoch in range(30):
        gen.set_epoch(epoch)
        _, y = gen[0]
        where.add(tuple(np.argwhere(y[0, ..., 0])[0]))
    assert len(where) > 10


def test_whole_slice_patch_is_no_crop_and_bad_patches_are_refused():
    images, masks = _store(n=4)
    gen = DataGeneratorUNet2D(images, masks, batch_size=4, shuffle=False, patch_size=(40, 48))
    np.testing.assert_array_equal(gen[0][0], images.astype(np.float32))
    for bad in ((41, 8), (8, 0), "big", (8,)):
        with pytest.raises(ValueError, match="patch_size"):
            DataGeneratorUNet2D(images, masks, patch_size=bad)


def test_patch_size_setting_is_checked(tmp_path):
    ok = tiny_settings(tmp_path, patch_size=(32, 32))
    assert ok.training_input_shape == (None, None, 2)
    assert tiny_settings(tmp_path, patch_size=(64, 64)).training_input_shape == (64, 64, 2)
    assert tiny_settings(tmp_path).training_input_shape == (64, 64, 2)
    for bad, words in (((30, 32), "multiples of 2\\*\\*DEPTH"), ((128, 32), "fit inside"),
                       ((32,), "PATCH_SIZE must be"), ("32", "PATCH_SIZE must be")):
        with pytest.raises(ConfigError, match=words):
            tiny_settings(tmp_path, patch_size=bad).validate()


@pytest.mark.slow
def test_training_on_patches_saves_a_whole_slice_model(tmp_path):
    s = tiny_settings(tmp_path, patch_size=(32, 32), epochs=1, target_sample_size_aug_train=32,
                      target_sample_size_aug_val=8, tune_postprocessing=False)
    write_cohort(s, n=6, clot_free=(6,))
    prepare_data(s, log=quiet, demo_if_empty=False)
    logs = []
    run = run_training(s, log=logs.append)
    assert any("(32, 32) patches" in line for line in logs)
    model = load_model(run)
    assert tuple(model.input_shape[1:]) == s.model_input_shape
    x = np.random.default_rng(0).integers(0, 255, (2, *s.model_input_shape)).astype(np.float32)
    assert model.predict(x, verbose=0).shape == (2, 64, 64, 1)
