"""Same seed, settings and inputs: same split, same augmented bytes, same first-epoch loss."""

import numpy as np
import pytest

from clotseg.cohort import discover_cases
from clotseg.pipeline import prepare_data
from clotseg.stages.augment import augmented_dir
from tests.conftest import quiet, tiny_settings, write_cohort

FIRST_EPOCH_LOSS_RTOL = 1e-4   # stated tolerance for CPU training, see README


def _prepared(root):
    s = tiny_settings(root)
    write_cohort(s, n=7)
    out = prepare_data(s, log=quiet, demo_if_empty=False)
    return s, out


def test_two_projects_give_identical_split_and_samples(tmp_path):
    a, out_a = _prepared(tmp_path / "a")
    b, out_b = _prepared(tmp_path / "b")
    assert out_a["cohorts"] == out_b["cohorts"]
    for cohort in ("Training", "Validation"):
        for name in ("images.npy", "masks.npy", "samples.csv"):
            assert (augmented_dir(a, cohort) / name).read_bytes() == (augmented_dir(b, cohort) / name).read_bytes()


def test_case_names_cannot_reach_outside_the_data_folders(tmp_path):
    s = tiny_settings(tmp_path)
    write_cohort(s, n=3)
    for odd in ("CS..x_CTA_Binary.npy", "CS1 _CTA_Binary.npy", "CS_CTA_Binary.npy", "CS1_CTA_Binary.npy.bak"):
        (s.volume_path / odd).write_bytes(b"")
    warnings = []
    ids = [c.case_id for c in discover_cases(s, warn=warnings.append)]
    assert ids == ["CS1", "CS2", "CS3"]
    assert all(id_.isalnum() for id_ in ids)
    assert len(warnings) == 3   # the .bak file is not a .npy and is skipped silently


@pytest.mark.slow
def test_first_epoch_loss_is_reproducible_on_cpu(tmp_path):
    import keras

    from myModels import build_model, get_loss, get_metrics
    from myModels.DataGeneratorUNet2D import DataGeneratorUNet2D

    s, _ = _prepared(tmp_path)
    losses = []
    for _ in range(2):
        keras.utils.set_random_seed(s.random_seed)
        model = build_model(s.model, s.model_input_shape, s.base_filters, s.depth, s.dropout, s.num_classes)
        model.compile(optimizer=keras.optimizers.Adam(s.learning_rate), loss=get_loss(s.loss),
                      metrics=get_metrics(1))
        gen = DataGeneratorUNet2D(augmented_dir(s, "Training") / "images.npy",
                                  augmented_dir(s, "Training") / "masks.npy", batch_size=8, seed=s.random_seed)
        losses.append(model.fit(gen, epochs=1, verbose=0).history["loss"][0])
    assert np.isfinite(losses[0])
    np.testing.assert_allclose(losses[0], losses[1], rtol=FIRST_EPOCH_LOSS_RTOL)
