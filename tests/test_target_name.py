"""TARGET_NAME: what the masks mark ("clot" by default, "hemorrhage" for an ICH
cohort) names the target in logs, the markdown table and report.html."""

import numpy as np
import pytest

from clotseg.errors import ConfigError
from clotseg.evaluation.html_report import build_html
from clotseg.evaluation.metrics import case_metrics
from clotseg.evaluation.report import build_summary, markdown_table
from clotseg.pipeline import summary_table
from clotseg.settings import Settings


def _rows():
    shape = (16, 16, 4)
    blob = np.zeros(shape, bool)
    blob[4:8, 4:8, 1:3] = True
    empty = np.zeros(shape, bool)
    cases = {"CS1": (blob, blob), "CS2": (empty, blob), "CS3": (empty, empty)}
    return [{"case_id": c, **case_metrics(p, t, (1.0, 1.0, 1.0))} for c, (p, t) in cases.items()]


def test_default_and_validation():
    assert Settings.from_dict({}).target_name == "clot"
    assert Settings.from_dict({"TARGET_NAME": "hemorrhage"}).target_name == "hemorrhage"
    for bad in ("", "   ", "x" * 41, "two\nlines", 3, None):
        with pytest.raises(ConfigError, match="TARGET_NAME"):
            Settings.from_dict({"TARGET_NAME": bad})


def test_config_py_names_the_target():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "config.py").read_text()
    assert 'TARGET_NAME = "clot"' in text


def test_markdown_and_html_use_the_target_name():
    summary = build_summary(_rows(), n_resamples=100, meta={"target_name": "hemorrhage"})
    text = markdown_table(summary)
    assert "hemorrhage cases" in text and "hemorrhage-free cases" in text
    assert "clot" not in text
    assert "clot cases" in markdown_table(summary, target_name="clot")
    page = build_html(summary, _rows(), target_name="hemorrhage")
    assert "Hemorrhage cases only" in page and "Specificity on hemorrhage-free cases" in page
    assert "Clot cases" not in page and "clot-free" not in page


def test_data_stage_table_uses_the_target_name():
    table = summary_table({"Training": ["a"], "Validation": ["b"], "Testing": []},
                          {"Training": {"n_samples": 3, "n_positive": 1}}, {}, "hemorrhage")
    assert "slices (with hemorrhage)" in table and "clot" not in table
