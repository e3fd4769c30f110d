"""Slices that are not adjacent in the source: recorded by the slice importer
(sidecar slice_numbers / slice_gaps) and never joined by 3D components or
surface distances when scoring; the slice importer's --config lines."""

import json

import cv2
import numpy as np
import pytest

from clotseg.evaluation.metrics import case_metrics, slice_runs
from clotseg.evaluation.scoring import score_folder
from clotseg.importers.__main__ import main as importer_main
from clotseg.importers.slices import slice_gaps


def _png(path, value, shape=(40, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros(shape, np.uint8)
    img[10:20, 10:20] = value
    assert cv2.imwrite(str(path), img)


def _config(tmp_path, text="INPUT_SHAPE = (64, 64, 2)\n"):
    path = tmp_path / "proj" / "config.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------ importer
def test_slice_gaps_helper():
    assert slice_gaps([3, 4, 7, 8, 10]) == [1, 3]
    assert slice_gaps([1, 2, 3]) == [] and slice_gaps(None) == []


def test_slice_importer_records_gaps_and_prints_config_lines(tmp_path, capsys):
    for case, numbers in (("1", (1, 2, 5, 6)), ("2", (1, 2, 3))):
        for n in numbers:
            _png(tmp_path / "im" / f"{case}_{n}.png", 200)
            _png(tmp_path / "mk" / f"{case}_{n}.png", 255)
    config = _config(tmp_path)
    code = importer_main(["slices", str(tmp_path / "im"), "--masks", str(tmp_path / "mk"), "--config", str(config)])
    out = capsys.readouterr().out
    assert code == 0, out
    vol = tmp_path / "proj" / "DL_vol_files" / "binary"
    side1 = json.loads((vol / "CS1.json").read_text())
    assert side1["slice_numbers"] == [1, 2, 5, 6] and side1["slice_gaps"] == [1]
    assert json.loads((vol / "CS2.json").read_text())["slice_gaps"] == []
    assert "gaps in their slice numbers" in out
    # single plain CT: a file name without "Reg"; real size (40x48 -> multiples of 2**DEPTH = 8), one channel
    assert (vol / "CS1_NCCT.npy").is_file()
    assert "size limit 64 px from INPUT_SHAPE" in out
    assert "MODALITY_PATTERNS = {'NCCT': 'CS<ID>_NCCT.npy'}" in out
    assert "WINDOWS_HU = {'NCCT': (0.0, 255.0)}" in out
    assert "INPUT_SHAPE = (40, 48, 1)" in out
    # the printed lines make a config that ClotSeg accepts
    lines = [ln.split("  #")[0] for ln in out.splitlines()
             if ln.startswith(("MODALITY_PATTERNS", "MASK_PATTERN", "WINDOWS_HU", "INPUT_SHAPE"))]
    from clotseg.settings import Settings

    config.write_text("\n".join(lines) + "\n")
    s = Settings.from_file(config)
    assert s.input_shape == (40, 48, 1) and s.modalities == ["NCCT"]


def test_size_limit_comes_from_input_shape(tmp_path, capsys):
    _png(tmp_path / "im" / "1_1.png", 100, shape=(80, 80))
    config = _config(tmp_path)
    assert importer_main(["slices", str(tmp_path / "im"), "--config", str(config)]) == 2
    assert "larger than --max-size 64" in capsys.readouterr().err
    assert importer_main(["slices", str(tmp_path / "im"), "--config", str(config), "--resize"]) == 0
    assert "INPUT_SHAPE = (64, 64, 1)" in capsys.readouterr().out


# ------------------------------------------------------------------- metrics
def test_slice_runs():
    assert slice_runs(6, [1, 3]) == [(0, 2), (2, 4), (4, 6)]
    assert slice_runs(4, None) == [(0, 4)] and slice_runs(4, [7, -1]) == [(0, 4)]


def test_components_and_distances_never_join_across_a_gap():
    t = np.zeros((12, 12, 4), bool)
    t[3:6, 3:6, 1:3] = True                      # spans slices 1 and 2
    plain = case_metrics(t, t)
    gapped = case_metrics(t, t, slice_gaps=[1])  # slice 2 does not follow slice 1 in the source
    assert plain["n_true_lesions"] == 1 and "n_slice_gaps" not in plain
    assert gapped["n_true_lesions"] == 2 and gapped["n_pred_components"] == 2 and gapped["n_slice_gaps"] == 1
    assert gapped["dice"] == 1.0 and gapped["hd"] == 0.0
    # prediction only on the far side of the gap: its distance is not the 1-slice step
    p = np.zeros_like(t)
    p[3:6, 3:6, 2] = True
    q = np.zeros_like(t)
    q[3:6, 3:6, 1] = True
    near = case_metrics(p, q, (1.0, 1.0, 1.0))
    apart = case_metrics(p, q, (1.0, 1.0, 1.0), slice_gaps=[1])
    assert near["hd"] == pytest.approx(1.0)
    assert apart["hd"] > 10 and apart["n_false_positive_components"] == 1


def test_scoring_reads_sidecar_gaps_and_says_so(tmp_path):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir()
    pred.mkdir()
    for cid in ("CS1", "CS2", "CS3"):
        t = np.zeros((12, 12, 4), np.uint8)
        t[3:6, 3:6, 1:3] = 1
        np.save(truth / f"{cid}_seg_corrected_binary.npy", t)
        np.save(pred / f"{cid}_pred.npy", t)
    (truth / "CS1.json").write_text(json.dumps({"slice_gaps": [1]}))
    summary, _ = score_folder(pred, truth, tmp_path / "out", n_resamples=100, log=lambda *a: None)
    text = json.dumps(summary)
    assert "never across a gap" in text and "CS1" in text
    csv_text = (tmp_path / "out" / "metrics.csv").read_text()
    assert "n_slice_gaps" in csv_text.splitlines()[0]
    assert "slice_gaps" in summary["conventions"]


def test_postprocessing_filters_never_join_across_a_gap():
    from clotseg.inference import postprocess

    m = np.zeros((8, 8, 4), np.uint8)
    m[2:4, 2:4, 1:3] = 1                          # 8 voxels over slices 1-2, 4 on each side of a gap
    assert postprocess(m, min_voxels=5).sum() == 8
    assert postprocess(m, min_voxels=5, slice_gaps=[1]).sum() == 0
    assert postprocess(m, keep_largest=True, slice_gaps=[1]).sum() == 4
