"""MODALITY_PATTERNS' order is the model's channel order: it survives the run's
saved settings and the stage fingerprints (which sort dict keys)."""

import numpy as np

from clotseg.io import load_npy, read_json
from clotseg.layout import TRAINING, load_run_settings, sliced_dir
from clotseg.pipeline import prepare_data
from clotseg.settings import Settings
from clotseg.stages.common import IMAGES
from tests.conftest import quiet, tiny_settings, write_cohort

NCCT_FIRST = {"NCCT": "CS<ID>_NCCT_Reg_Binary.npy", "CTA": "CS<ID>_CTA_Binary.npy"}


def test_saved_settings_keep_the_modality_order(tmp_path):
    s = tiny_settings(tmp_path, modality_patterns=NCCT_FIRST)
    (tmp_path / "config.json").write_text(s.to_json())
    again = Settings.from_run_config(tmp_path / "config.json", tmp_path)
    assert again.modalities == ["NCCT", "CTA"]
    assert again.windows_hu == s.windows_hu


def test_swapping_the_modalities_reslices_with_swapped_channels(tmp_path):
    s = tiny_settings(tmp_path)
    write_cohort(s, n=6)
    prepare_data(s, log=quiet, demo_if_empty=False)
    store = sliced_dir(s, TRAINING) / IMAGES
    cta_first = np.array(load_npy(store))
    # the slice key follows the order through the cases' file signatures (listed per modality):
    # a store of the other order must not be taken as up to date
    swapped = s.replace(modality_patterns=NCCT_FIRST)
    prepare_data(swapped, log=quiet, demo_if_empty=False)
    ncct_first = np.array(load_npy(store))
    assert cta_first.shape == ncct_first.shape
    assert not np.array_equal(cta_first[..., 0], cta_first[..., 1])   # the two modalities differ
    np.testing.assert_array_equal(ncct_first[..., 0], cta_first[..., 1])
    np.testing.assert_array_equal(ncct_first[..., 1], cta_first[..., 0])


def test_a_run_with_the_ncct_first_is_tuned_and_tested_in_its_order(tmp_path, monkeypatch):
    from clotseg.stages import train as train_stage
    from clotseg.stages.evaluate import run_evaluation

    tuner_windows = []
    original = train_stage.predict_volume_members

    def spy(model, volumes, windows, *args, **kwargs):
        tuner_windows.append([tuple(w) for w in windows])
        return original(model, volumes, windows, *args, **kwargs)

    monkeypatch.setattr(train_stage, "predict_volume_members", spy)
    s = tiny_settings(tmp_path, modality_patterns=NCCT_FIRST, epochs=1)
    write_cohort(s, n=8)
    prepare_data(s, log=quiet, demo_if_empty=False)
    run = train_stage.run_training(s, log=quiet)
    assert load_run_settings(run, tmp_path).modalities == ["NCCT", "CTA"]
    # the tuner encodes every Validation volume in the run's channel order (NCCT window first)
    assert tuner_windows and all(w == [tuple(s.windows_hu["NCCT"]), tuple(s.windows_hu["CTA"])]
                                 for w in tuner_windows)
    summary = run_evaluation(s, run_name=run.name, log=quiet)   # refused before: "trained on ['CTA', 'NCCT']"
    assert summary["metrics_clot_cases"]["dice"]["n"] >= 1
    assert read_json(run / "run.json")["epochs_done"] == 1
