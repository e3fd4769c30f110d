"""MODALITY_DROPOUT: training samples with one modality's channels blanked
(ModDrop); the channel groups follow the model input's layout."""

import numpy as np
import pytest

from clotseg.errors import ConfigError
from clotseg.intensity import add_context, add_mirror, modality_channels
from clotseg.io import read_json
from clotseg.pipeline import prepare_data
from clotseg.settings import Settings
from myModels.DataGeneratorUNet2D import DataGeneratorUNet2D
from tests.conftest import quiet, tiny_settings, write_cohort


@pytest.mark.parametrize("k,symmetry", [(0, False), (1, False), (2, True)])
def test_channel_groups_follow_the_model_input_layout(k, symmetry):
    # modality m is filled with code 10 (m + 1), so every input channel tells its modality
    planes = np.stack([np.full((5, 6, 7), 10 * (m + 1), np.uint8) for m in range(3)], axis=-1)  # (D, H, W, M)
    x = add_context(planes, k)
    if symmetry:
        x = add_mirror(x, k)
    groups = modality_channels(3, k, symmetry)
    assert sorted(c for g in groups for c in g) == list(range(x.shape[-1]))
    for m, group in enumerate(groups):
        assert len(group) == (2 * k + 1) * (2 if symmetry else 1)
        centre = x[2, 2, 3]  # a pixel on the midline column: mirrored onto itself
        assert set(centre[group].tolist()) == {10 * (m + 1)}


def _batch_source(n=64, h=8, w=8):
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (n, h, w, 6), dtype=np.uint8)  # 2 modalities x 3 context slices
    masks = (rng.random((n, h, w)) > 0.8).astype(np.uint8)
    return images, masks


def test_every_sample_loses_exactly_one_modality_at_probability_one():
    images, masks = _batch_source()
    groups = modality_channels(2, 1)
    gen = DataGeneratorUNet2D(images, masks, batch_size=16, shuffle=False, modality_dropout=1.0,
                              modality_channels=groups)
    plain = DataGeneratorUNet2D(images, masks, batch_size=16, shuffle=False)
    losses = []
    for b in range(len(gen)):
        (x, y), (x0, y0) = gen[b], plain[b]
        np.testing.assert_array_equal(y, y0)                   # the mask is unchanged
        for i in range(len(x)):
            blank = [not x[i][..., g].any() for g in groups]
            assert sum(blank) == 1                             # codes are >= 1, so 0 means blanked
            kept = groups[blank.index(False)]
            np.testing.assert_array_equal(x[i][..., kept], x0[i][..., kept])
            losses.append(blank.index(True))
    assert 0 < np.mean(losses) < 1                             # both modalities get dropped
    assert images.min() >= 1                                   # the source rows are not touched


def test_dropout_share_is_seeded_and_leaves_patch_crops_alone():
    images, masks = _batch_source(n=400, h=16, w=16)
    groups = modality_channels(2, 1)
    kwargs = dict(batch_size=40, seed=7, patch_size=(8, 8))
    gen = DataGeneratorUNet2D(images, masks, modality_dropout=0.3, modality_channels=groups, **kwargs)
    again = DataGeneratorUNet2D(images, masks, modality_dropout=0.3, modality_channels=groups, **kwargs)
    plain = DataGeneratorUNet2D(images, masks, **kwargs)
    dropped = 0
    for b in range(len(gen)):
        (x, y), (x2, _), (x0, y0) = gen[b], again[b], plain[b]
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y0)                   # same crops: its own random stream
        changed = (x != x0).reshape(len(x), -1).any(axis=1)
        dropped += int(changed.sum())
    assert 0.2 < dropped / len(images) < 0.4


def test_generator_rejects_bad_dropout_arguments():
    images, masks = _batch_source(n=4)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        DataGeneratorUNet2D(images, masks, modality_dropout=1.5, modality_channels=modality_channels(2, 1))
    with pytest.raises(ValueError, match="two modalities"):
        DataGeneratorUNet2D(images, masks, modality_dropout=0.5, modality_channels=[[0, 1, 2, 3, 4, 5]])
    with pytest.raises(ValueError, match="needs modality_channels"):
        DataGeneratorUNet2D(images, masks, modality_dropout=0.5)
    with pytest.raises(ValueError, match="below 6"):
        DataGeneratorUNet2D(images, masks, modality_dropout=0.5, modality_channels=[[0, 1], [2, 9]])
    off = DataGeneratorUNet2D(images, masks, modality_dropout=0.0)
    assert off.modality_channels is None


def test_settings_check_the_share_and_the_modalities(tmp_path):
    with pytest.raises(ConfigError, match="MODALITY_DROPOUT must be in"):
        Settings.from_dict({"MODALITY_DROPOUT": -0.1}, root=tmp_path).validate()
    with pytest.raises(ConfigError, match="at least two modalities"):
        Settings.from_dict({"MODALITY_DROPOUT": 0.3, "MODALITY_PATTERNS": {"CTA": "CS<ID>_CTA_Binary.npy"},
                            "INPUT_SHAPE": (256, 256, 1)}, root=tmp_path).validate()
    Settings.from_dict({"MODALITY_DROPOUT": 0.3}, root=tmp_path).validate()


def test_a_training_run_with_modality_dropout_trains_and_tests(tmp_path, monkeypatch):
    """The training generator blanks modalities; the validation one never does."""
    from clotseg.stages import train as train_stage
    from clotseg.stages.evaluate import run_evaluation

    made = []
    original = train_stage.DataGeneratorUNet2D

    def spy(*args, **kwargs):
        made.append((kwargs.get("shuffle"), kwargs.get("modality_dropout")))
        return original(*args, **kwargs)

    monkeypatch.setattr(train_stage, "DataGeneratorUNet2D", spy)
    s = tiny_settings(tmp_path, modality_dropout=0.5, epochs=1)
    write_cohort(s, n=8)
    prepare_data(s, log=quiet, demo_if_empty=False)
    run = train_stage.run_training(s, log=quiet)
    assert sorted(made) == [(False, 0.0), (True, 0.5)]
    assert read_json(run / "run.json")["epochs_done"] == 1
    summary = run_evaluation(s, run_name=run.name, log=quiet)
    assert summary["metrics_clot_cases"]["dice"]["n"] >= 1
