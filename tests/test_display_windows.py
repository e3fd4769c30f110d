"""DISPLAY_WINDOWS_HU: which window the report's pictures use per case."""

import json

from clotseg.evaluation.rendering import _is_raw, figure_windows
from clotseg.evaluation.scoring import CaseFiles
from clotseg.settings import Settings

MODEL = {"CTA": (-100.0, 600.0), "NCCT": (0.0, 200.0)}


def test_the_display_window_replaces_the_model_window_of_its_modality():
    shipped = Settings()
    assert figure_windows(shipped.windows_hu, shipped.display_windows_hu) == {"CTA": (-100.0, 600.0),
                                                                            "NCCT": (0.0, 80.0)}
    # a modality the cohort does not have is ignored; no display window: the model's
    assert figure_windows({"CT": (0.0, 255.0)}, {"NCCT": (0.0, 80.0)}) == {"CT": (0.0, 255.0)}
    assert figure_windows(MODEL, {}) == MODEL


def test_no_hu_display_window_for_raw_or_normalised_intensities():
    # an 8-bit slice import named NCCT keeps its raw (0, 255) window
    assert figure_windows({"NCCT": (0.0, 255.0)}, {"NCCT": (0.0, 80.0)}, raw=True) == {"NCCT": (0.0, 255.0)}
    # volumes already normalised (model window None) are shown as they are
    assert figure_windows({"NCCT": None}, {"NCCT": (0.0, 80.0)}) == {"NCCT": None}


def test_a_case_is_raw_only_when_its_sidecar_says_so(tmp_path):
    def case(side):
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.json"
        path.write_text(side if isinstance(side, str) else json.dumps(side))
        return CaseFiles("CS1", tmp_path / "p.npy", sidecar=path)

    assert _is_raw(case({"intensity": "raw"}))
    assert not _is_raw(case({"intensity": "HU"}))
    assert not _is_raw(case({"spacing_mm": [1, 1, 1]}))
    assert not _is_raw(case("{broken"))
    assert not _is_raw(CaseFiles("CS1", tmp_path / "p.npy"))
