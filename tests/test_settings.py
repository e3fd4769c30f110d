"""config.py -> Settings: defaults in sync, validation lists every problem."""

import importlib.util
from pathlib import Path

import pytest

from clotseg.errors import ConfigError
from clotseg.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _config_module():
    spec = importlib.util.spec_from_file_location("cfg", ROOT / "config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_config_py_matches_dataclass_defaults():
    mod = _config_module()
    shipped = Settings.from_module(mod)
    defaults = Settings(root=shipped.root)
    for name in Settings.field_names():
        if name in ("presets",):
            continue
        assert getattr(shipped, name) == getattr(defaults, name), name


def test_every_config_constant_is_a_setting():
    mod = _config_module()
    names = {k.lower() for k in dir(mod) if k.isupper()}
    assert names <= set(Settings.field_names())


def test_demo_preset_overlays_without_changing_defaults():
    mod = _config_module()
    demo = Settings.from_module(mod, preset="demo")
    assert demo.input_shape == mod.PRESETS["demo"]["INPUT_SHAPE"]
    assert demo.preset == "demo"
    assert Settings.from_module(mod).input_shape == (256, 256, 2)


def test_all_problems_listed_at_once(tmp_path):
    with pytest.raises(ConfigError) as exc:
        Settings.from_dict({"TRAIN_PERC": 0.9, "VAL_PERC": 0.3, "BATCH_SIZE": -4,
                            "INPUT_SHAPE": (100, 100, 2), "LOSS": "hinge"}, root=tmp_path)
    text = str(exc.value)
    assert "TRAIN_PERC + VAL_PERC" in text
    assert "BATCH_SIZE" in text
    assert "multiples of 2**DEPTH" in text
    assert "LOSS" in text
    assert len(exc.value.problems) == 4


def test_unknown_setting_suggests_the_right_name(tmp_path):
    with pytest.raises(ConfigError, match="did you mean LEARNING_RATE"):
        Settings.from_dict({"LEARNIG_RATE": 0.1}, root=tmp_path)


def test_window_and_channel_consistency(tmp_path):
    with pytest.raises(ConfigError, match="channel"):
        Settings.from_dict({"INPUT_SHAPE": (64, 64, 3)}, root=tmp_path)
    with pytest.raises(ConfigError, match="low < high"):
        Settings.from_dict({"WINDOWS_HU": {"CTA": (600, -100), "NCCT": None}}, root=tmp_path)
    one = Settings.from_dict({"MODALITY_PATTERNS": {"NCCT": "CS<ID>_NCCT.npy"}, "WINDOWS_HU": {"NCCT": (0, 80)},
                              "INPUT_SHAPE": (64, 64, 1)}, root=tmp_path)
    assert one.modalities == ["NCCT"]


def test_shipped_presets_follow_a_one_channel_cohort(tmp_path):
    """docs/importing.md's worked example: the importer's lines for one plain
    CT channel pasted into config.py, PRESETS left as shipped. The presets
    set rows and cols; their channel count follows MODALITY_PATTERNS."""
    mod = _config_module()
    values = {k: getattr(mod, k) for k in dir(mod) if k.isupper()}
    values.update(MODALITY_PATTERNS={"NCCT": "CS<ID>_NCCT.npy"}, WINDOWS_HU={"NCCT": (0.0, 255.0)},
                  DISPLAY_WINDOWS_HU={}, INPUT_SHAPE=(256, 256, 1))
    assert Settings.from_dict(values, root=tmp_path).input_shape == (256, 256, 1)
    demo = Settings.from_dict(values, root=tmp_path, preset="demo")
    assert demo.input_shape == (*mod.PRESETS["demo"]["INPUT_SHAPE"][:2], 1)
    three = {**values,
             "MODALITY_PATTERNS": {"CTA": "CS<ID>_CTA.npy", "NCCT": "CS<ID>_NCCT.npy", "CTP": "CS<ID>_CTP.npy"},
             "WINDOWS_HU": {"CTA": (-100, 600), "NCCT": (0, 200), "CTP": (0, 100)}, "INPUT_SHAPE": (256, 256, 3)}
    assert Settings.from_dict(three, root=tmp_path, preset="cpu").input_shape == (128, 128, 3)
    # the file's own INPUT_SHAPE still has to match its modalities
    with pytest.raises(ConfigError, match="INPUT_SHAPE has 2 channel"):
        Settings.from_dict({**values, "INPUT_SHAPE": (256, 256, 2)}, root=tmp_path)


def test_json_round_trip(tmp_path):
    s = Settings.from_dict({"INPUT_SHAPE": (64, 64, 2), "VOXEL_SPACING_MM": (0.5, 0.5, 1.0)}, root=tmp_path)
    import json

    back = Settings.from_dict(json.loads(s.to_json()), root=tmp_path)
    assert back == s


def test_broken_config_file_is_a_config_error(tmp_path):
    bad = tmp_path / "config.py"
    bad.write_text("TRAIN_PERC = (\n")
    with pytest.raises(ConfigError, match="could not be read"):
        Settings.from_file(bad)


def test_a_bad_display_window_is_named_in_the_message():
    with pytest.raises(ConfigError, match=r"DISPLAY_WINDOWS_HU\['NCCT'\] must be \(low, high\)"):
        Settings(display_windows_hu={"NCCT": (80.0, 0.0)}).validate()
