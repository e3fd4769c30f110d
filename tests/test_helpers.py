"""One definition each of natural sort, pattern-to-regex and JSON conversion
(clotseg.helpers); the modules that used to define their own import it."""

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest

from clotseg.helpers import component_peaks, jsonable, natural_key, pattern_regex

ROOT = Path(__file__).resolve().parent.parent


def test_natural_key():
    assert sorted(["CS10", "cs2", "CS1", "a", "2b"], key=natural_key) == ["2b", "a", "CS1", "cs2", "CS10"]
    assert sorted(["slice_010.png", "slice_9.png"], key=natural_key) == ["slice_9.png", "slice_010.png"]


def test_pattern_regex_config_and_importer_forms():
    rx = pattern_regex("CS<ID>_CTA_Binary.npy")
    assert rx.fullmatch("cs12_cta_binary.NPY").group("id") == "12"
    assert rx.fullmatch("CS12_CTA_Binary.npy.bak") is None
    glob = pattern_regex("{case}/*_cta.nii.gz", "{case}", "case", r"[^/]*?", wildcards=True, ignore_case=False)
    assert glob.fullmatch("p01/x_cta.nii.gz").group("case") == "p01"
    assert glob.fullmatch("p01/a/x_cta.nii.gz") is None


def test_jsonable():
    value = {1: (np.float32(0.5), float("nan")), "p": Path("a/b"), "arr": np.arange(3), "i": np.int64(7)}
    out = jsonable(value)
    assert out == {"1": [0.5, None], "p": "a/b", "arr": [0, 1, 2], "i": 7}
    json.dumps(out, allow_nan=False)
    kept = jsonable({"x": (float("inf"),)}, finite_only=False, str_keys=False)
    assert math.isinf(kept["x"][0])


def test_component_peaks_are_each_components_largest_value():
    rng = np.random.default_rng(1)
    values = rng.random((9, 8, 5))
    labels = rng.integers(0, 4, (9, 8, 5)) * (rng.random((9, 8, 5)) < 0.4)
    labels[labels == 2] = 0                                    # label 2 has no voxel
    values[labels == 0] = 5.0                                  # the background is brighter than any component
    peaks = component_peaks(labels, 4, values)
    assert np.isnan(peaks[1]) and peaks.dtype == np.float64
    for k in (1, 3):
        assert peaks[k - 1] == values[labels == k].max()
    assert np.isnan(peaks[3])                                  # label 4 above the labels present
    assert component_peaks(labels, 0, values).shape == (0,)
    with pytest.raises(ValueError, match="differ in shape"):
        component_peaks(labels, 3, values[..., 0])


def test_no_other_definitions():
    names = {"natural_key", "pattern_regex", "_jsonable", "jsonable", "_natural", "_literal_regex"}
    for path in (ROOT / "clotseg").rglob("*.py"):
        if path.name in ("helpers.py", "phantom.py"):
            continue
        tree = ast.parse(path.read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        # nifti keeps a thin pattern_regex that checks '{case}' and calls the shared one;
        # settings keeps _jsonable as a one-line call with its strict options
        allowed = {"importers/nifti.py": {"pattern_regex"}, "settings.py": {"_jsonable"}}
        rel = path.relative_to(ROOT / "clotseg").as_posix()
        assert not (defined & names) - allowed.get(rel, set()), rel
