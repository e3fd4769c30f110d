"""Deep supervision (DEEP_SUPERVISION): the coarser decoder outputs, their
loss on the pooled mask, the generator's repeated targets, and a run that
trains with them but saves and tests a single-output model."""

import keras
import numpy as np
import pytest

from clotseg.errors import ConfigError
from clotseg.layout import HISTORY, LAST_CHECKPOINT
from clotseg.pipeline import prepare_data
from clotseg.stages.evaluate import load_model
from clotseg.stages.train import inference_copy, run_training
from myModels import DiceLoss, DownsampledLoss, build_model, deep_supervision_losses
from myModels.DataGeneratorUNet2D import DataGeneratorUNet2D
from tests.conftest import quiet, tiny_settings, write_cohort


@pytest.mark.parametrize("name", ["unet", "resunet"])
def test_deep_supervision_adds_one_coarser_output_per_decoder_level(name):
    model = build_model(name, (32, 32, 6), base_filters=4, depth=3, dropout=0.0, num_classes=1,
                        deep_supervision=True)
    plain = build_model(name, (32, 32, 6), base_filters=4, depth=3, dropout=0.0, num_classes=1)
    assert model.output_names == ["probabilities", "aux1", "aux2"]
    outputs = model.predict(np.zeros((2, 32, 32, 6), np.float32), verbose=0)
    assert [o.shape for o in outputs] == [(2, 32, 32, 1), (2, 16, 16, 1), (2, 8, 8, 1)]
    # each head is one 1x1 conv: 4*2 + 1 and 4*4 + 1 parameters on top of the plain model
    assert model.count_params() - plain.count_params() == (4 * 2 + 1) + (4 * 4 + 1)


def test_inference_copy_of_a_deep_supervision_model_is_the_main_output_alone(tmp_path):
    s = tiny_settings(tmp_path, deep_supervision=True)
    model = build_model(s.model, s.model_input_shape, s.base_filters, s.depth, s.dropout, s.num_classes,
                        deep_supervision=True)
    x = np.random.default_rng(1).integers(0, 255, (2, *s.model_input_shape)).astype(np.float32)
    copy = inference_copy(model, s)
    assert len(copy.outputs) == 1
    np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0)[0], atol=1e-6)


def _avg_pool(mask, f):
    b, h, w, k = mask.shape
    return mask.reshape(b, h // f, f, w // f, f, k).mean(axis=(2, 4))


def test_downsampled_loss_scores_the_area_pooled_target_and_reloads():
    rng = np.random.default_rng(0)
    y = np.zeros((2, 16, 16, 1), np.float32)
    y[0, 3:6, 4:9] = 1                      # a clot that does not align with the 4x4 blocks
    y[1, 10, 10] = 1                        # a one-pixel clot: 1/16 of its coarse pixel, not lost
    pred = rng.uniform(0.01, 0.99, (2, 4, 4, 1)).astype(np.float32)
    loss = DownsampledLoss(DiceLoss(), 4)
    expected = float(DiceLoss()(_avg_pool(y, 4), pred))
    assert float(loss(y, pred)) == pytest.approx(expected, rel=1e-5)
    assert _avg_pool(y, 4)[1].max() == pytest.approx(1 / 16)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, DownsampledLoss) and again.factor == 4
    assert float(again(y, pred)) == pytest.approx(expected, rel=1e-5)
    # a (B, H, W) mask is accepted as the other losses accept it
    assert float(loss(y[..., 0], pred)) == pytest.approx(expected, rel=1e-5)


def test_deep_supervision_weights_halve_per_level_and_sum_to_one():
    losses, weights = deep_supervision_losses("bce_dice", 3)
    assert [getattr(loss, "factor", 1) for loss in losses] == [1, 2, 4]
    assert sum(weights) == pytest.approx(1.0)
    assert weights[0] == pytest.approx(2 * weights[1]) and weights[1] == pytest.approx(2 * weights[2])


def test_generator_repeats_the_target_for_every_output():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (4, 16, 16, 2), dtype=np.uint8)
    masks = (images[..., 0] > 200).astype(np.uint8)
    x, y = DataGeneratorUNet2D(images, masks, batch_size=4, shuffle=False, num_outputs=3)[0]
    _, single = DataGeneratorUNet2D(images, masks, batch_size=4, shuffle=False)[0]
    assert isinstance(y, tuple) and len(y) == 3
    for target in y:
        np.testing.assert_array_equal(target, single)
    with pytest.raises(ValueError, match="num_outputs"):
        DataGeneratorUNet2D(images, masks, num_outputs=0)


def test_deep_supervision_setting_is_checked(tmp_path):
    tiny_settings(tmp_path, deep_supervision=True).validate()
    with pytest.raises(ConfigError, match="DEEP_SUPERVISION needs DEPTH >= 2"):
        tiny_settings(tmp_path, deep_supervision=True, depth=1).validate()
    with pytest.raises(ConfigError, match="DEEP_SUPERVISION must be True or False"):
        tiny_settings(tmp_path, deep_supervision="yes").validate()


@pytest.mark.slow
def test_training_with_deep_supervision_saves_a_single_output_model(tmp_path):
    s = tiny_settings(tmp_path, deep_supervision=True, epochs=2, target_sample_size_aug_train=32,
                      target_sample_size_aug_val=8, tune_postprocessing=False)
    write_cohort(s, n=6, clot_free=(6,))
    prepare_data(s, log=quiet, demo_if_empty=False)
    run = run_training(s, log=quiet)
    header = (run / HISTORY).read_text().splitlines()[0].split(",")
    # the main output's metrics keep their single-output names; each output's loss is logged
    assert s.depth >= 2
    aux_losses = {f"aux{k}_loss" for k in range(1, s.depth)}
    assert {"dice", "val_dice", "iou", "loss", "probabilities_loss", *aux_losses} <= set(header)
    assert not any(col.startswith("probabilities_dice") for col in header)
    model = load_model(run)
    assert len(model.outputs) == 1
    x = np.random.default_rng(0).integers(0, 255, (2, *s.model_input_shape)).astype(np.float32)
    assert model.predict(x, verbose=0).shape == (2, *s.model_input_shape[:2], 1)
    # the resumable checkpoint keeps every output and its losses, and reloads in safe mode
    last = keras.models.load_model(run / LAST_CHECKPOINT, safe_mode=True)
    assert len(last.outputs) == s.depth
