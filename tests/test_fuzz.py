"""Fuzz the data stages (issue 13): random small cohorts with random defects
and random config values; every `python training.py --prepare-only` run must
either succeed or stop with exit status 2 and one message (no traceback), and
must never change the input folders.

Each example writes a project (config.py + cohort) into a fresh temporary
folder and calls training.py's `main` in-process through `run_main`, as the
script does (a subprocess per example would spend most of its time importing
albumentations). Examples are derandomised so CI runs the same ones; set
CLOTSEG_FUZZ_EXAMPLES=500 (and CLOTSEG_FUZZ_RANDOM=1 for fresh ones) to fuzz
longer locally.
"""

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from clotseg.cli import run_main
from clotseg.io import read_manifest
from clotseg.settings import Settings
from tests.conftest import ROOT

EXAMPLES = int(os.environ.get("CLOTSEG_FUZZ_EXAMPLES", "300"))
RANDOM = os.environ.get("CLOTSEG_FUZZ_RANDOM", "") not in ("", "0")

VOL, SEG = "DL_vol_files/binary", "DL_seg_files/binary"
BASE = {  # tiny, fast, and one process (see NUM_WORKERS)
    "INPUT_SHAPE": "(32, 32, 2)", "DEPTH": "2", "BASE_FILTERS": "4", "TARGET_SAMPLE_SIZE_AUG_TRAIN": "12",
    "TARGET_SAMPLE_SIZE_AUG_VAL": "6", "BATCH_SIZE": "4", "NUM_WORKERS": "1", "BOOTSTRAP_RESAMPLES": "200",
}

# config.py lines (source text): valid edge values ...
VALID_CONFIG = [
    ("CONTEXT_SLICES", "0"), ("CONTEXT_SLICES", "2"), ("AUGMENTATION", "'standard'"), ("AUG_P", "0.0"),
    ("AUG_P", "1"), ("POSITIVE_FRACTION", "0.0"), ("POSITIVE_FRACTION", "1.0"), ("HARD_NEGATIVE_FRACTION", "1.0"),
    ("HARD_NEGATIVE_FRACTION", "0"), ("STRATIFY_SPLIT", "False"), ("TRAIN_PERC", "0.01"), ("VAL_PERC", "0.4"),
    ("WINDOWS_HU", "{'CTA': None, 'NCCT': (-1000.0, 3000.0)}"), ("VOXEL_SPACING_MM", "(0.5, 0.5, 2.0)"),
    ("RANDOM_SEED", "2**32 - 1"), ("NUM_WORKERS", "0"), ("INPUT_SHAPE", "(24, 40, 2)"), ("DEPTH", "3"),
    ("BATCH_SIZE", "12"), ("MODALITY_PATTERNS", "{'CTA': 'cs<ID>_cta_binary.NPY', 'NCCT': 'CS<ID>_NCCT_Reg_Binary.npy'}"),
    ("CASE_PREFIX", "'cs'"), ("TARGET_SAMPLE_SIZE_AUG_VAL", "1"), ("PROCESSED_DIR", "'out/Processed'"),
    ("NUM_CLASSES", "2"), ("VOXEL_SPACING_MM", "[0.5, 0.5, 1]"), ("DISPLAY_WINDOWS_HU", "{}"),
    ("DISPLAY_WINDOWS_HU", "{'CT': (0, 80), 'CTA': [0, 400]}"),
]
# ... and invalid ones
INVALID_CONFIG = [
    ("TRAIN_PERC", "1.2"), ("TRAIN_PERC", "'0.6'"), ("VAL_PERC", "float('nan')"), ("BATCH_SIZE", "0"),
    ("BATCH_SIZE", "2.5"), ("BATCH_SIZE", "True"), ("BATCH_SIZE", "100"), ("INPUT_SHAPE", "(30, 30, 2)"),
    ("INPUT_SHAPE", "[32, 32]"), ("INPUT_SHAPE", "(32, 32, 3)"), ("INPUT_SHAPE", "'32x32'"), ("DEPTH", "0"),
    ("DEPTH", "9"), ("WINDOWS_HU", "{'CTA': (600, -100), 'NCCT': (0, 80)}"), ("WINDOWS_HU", "{'CTA': (0, 1)}"),
    ("WINDOWS_HU", "{'CTA': (True, 600), 'NCCT': (0, 1e300)}"), ("WINDOWS_HU", "[(-100, 600), (0, 80)]"),
    ("RANDOM_SEED", "2**40"), ("RANDOM_SEED", "-1"), ("RANDOM_SEED", "10**400"), ("LOSS", "['dice']"),
    ("MODEL", "'vnet'"), ("JIT_COMPILE", "1"), ("NUM_WORKERS", "-2"), ("NUM_CLASSES", "300"),
    ("CONTEXT_SLICES", "9"), ("AUG_P", "float('inf')"), ("TARGET_SAMPLE_SIZE_AUG_TRAIN", "10**13"),
    ("PRESETS", "{'demo': [1]}"), ("PRESETS", "[1, 2]"), ("PRESETS", "{'x': {'BACH_SIZE': 2}}"),
    ("PRESETS", "{'x': {'DEPTH': 7}}"), ("PRESET", "'nope'"), ("PRESET", "['demo']"),
    ("MODALITY_PATTERNS", "{'CTA': 'CS<ID>_CTA_Binary.npy'}"), ("MODALITY_PATTERNS", "{'CTA': 'CS_CTA.npy', 'NCCT': 'x'}"),
    ("MASK_PATTERN", "'P<ID>_seg.npy'"), ("MASK_PATTERN", "'CS<ID>_CTA_Binary.npy'"), ("CASE_PREFIX", "'C S'"),
    ("CASE_PREFIX", "'P'"), ("PROCESSED_DIR", f"'{VOL}/out'"), ("PROCESSED_DIR", f"'{SEG}'"),
    ("TRAININGS_DIR", f"'{VOL}/CS1_CTA_Binary.npy'"), ("VOLUME_DIR", "'no/such/folder'"),
    ("MASK_DIR", f"'{VOL}/CS1_CTA_Binary.npy'"), ("VOLUME_DIR", "''"), ("LEARNIG_RATE", "0.1"),
    ("SLICE_EXTRACT", "False"), ("DATA_AUG", "0"), ("TEST_RUN", "'..'"), ("VOXEL_SPACING_MM", "(1, 1)"),
    ("THRESHOLD", "1.5"), ("BOOTSTRAP_RESAMPLES", "10**9"), ("DISTRIBUTION", "'all'"),
    ("DISPLAY_WINDOWS_HU", "{'NCCT': None}"), ("DISPLAY_WINDOWS_HU", "{'NCCT': (80, 0)}"),
    ("DISPLAY_WINDOWS_HU", "(0, 80)"),
    ("__SYNTAX__", "TRAIN_PERC = ("), ("__RAISE__", "raise RuntimeError('config.py failed')"),
    ("__NUMPY__", "import numpy as np\nBATCH_SIZE = np.int64(4)"),
    ("PRESET", "'demo'"),   # valid, but slow (128 px, 800 samples): kept rare here
]

DEFECTS = ["float64", "int16", "uint16_overflow", "int32", "uint8", "float16", "bool",
           "complex", "strings", "pickled", "truncated", "empty_file", "not_npy", "nan", "inf", "shape_mismatch",
           "2d", "4d", "mask_values", "mask_255", "mask_all_255", "mask_float", "too_large", "missing_partner",
           "missing_mask", "orphan_mask", "huge_header", "zero_padded_id", "odd_extra_name", "mask_negative",
           "mask_large_int", "upper_case", "lower_case_name", "duplicate_name", "extra_file",
           "sidecar_ok", "sidecar_bad_json", "sidecar_list", "sidecar_spacing", "sidecar_upper", "symlink_loop",
           "broken_symlink", "folder", "empty_mask", "zero_slices", "big_endian", "fortran"]


def _case_arrays(rng, shape, clot=True):
    cta = rng.normal(40, 10, shape).astype(np.float32)
    ncct = rng.normal(35, 5, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    if clot:
        h, w, d = shape
        mask[h // 3:h // 3 + 3, w // 3:w // 3 + 3, d // 2] = 1
        cta[mask > 0] = 80
        ncct[mask > 0] = 65
    return {"CTA": cta, "NCCT": ncct, "mask": mask}


def _write_case(vol: Path, seg: Path, cid: int, rng, shape, defect: str, target: str):
    """Write case CS<cid> with `defect` applied to its `target` file."""
    arrays = _case_arrays(rng, shape, clot=defect != "empty_mask")
    names = {"CTA": f"CS{cid}_CTA_Binary.npy", "NCCT": f"CS{cid}_NCCT_Reg_Binary.npy",
             "mask": f"CS{cid}_seg_corrected_binary.npy"}
    folders = {"CTA": vol, "NCCT": vol, "mask": seg}
    if defect in ("mask_values", "mask_255", "mask_all_255", "mask_float", "missing_mask", "orphan_mask"):
        target = "mask"
    if defect == "missing_partner" and target == "mask":
        target = "NCCT"
    arr = arrays[target]
    if defect == "float64":
        arrays[target] = arr.astype(np.float64)
    elif defect == "int16":
        arrays[target] = arr.astype(np.int16)
    elif defect == "uint16_overflow" and target != "mask":
        arrays[target] = (arr - 1000).astype(np.int32).astype(np.uint16)
    elif defect == "int32":
        arrays[target] = arr.astype(np.int32)
    elif defect == "uint8":
        arrays[target] = np.clip(arr, 0, 255).astype(np.uint8)
    elif defect == "float16":
        arrays[target] = arr.astype(np.float16)
    elif defect == "bool":
        arrays[target] = arr > 40
    elif defect == "complex":
        arrays[target] = arr.astype(np.complex64)
    elif defect == "strings":
        arrays[target] = arr.astype(str)
    elif defect == "nan" and target != "mask":
        arr = arr.copy()
        arr.flat[0] = np.nan
        arrays[target] = arr
    elif defect == "inf" and target != "mask":
        arr = arr.copy()
        arr.flat[-1] = -np.inf
        arrays[target] = arr
    elif defect == "shape_mismatch":
        arrays[target] = arr[:, :, :-1] if arr.shape[2] > 1 else arr[:-1]
    elif defect == "2d":
        arrays[target] = arr[:, :, 0]
    elif defect == "4d":
        arrays[target] = arr[..., None]
    elif defect == "mask_values":
        arrays["mask"] = arrays["mask"] * 2 + (arrays["mask"] > 0)
    elif defect == "mask_255":
        arrays["mask"] = arrays["mask"] * 255
    elif defect == "mask_all_255":
        arrays["mask"] = np.full(shape, 255, np.uint8)
    elif defect == "mask_float":
        arrays["mask"] = arrays["mask"].astype(np.float32) * 0.5
    elif defect == "too_large":
        big = (40, 36, shape[2])
        arrays = _case_arrays(rng, big)
    elif defect == "zero_slices":
        arrays = {k: v[:, :, :0] for k, v in arrays.items()}
    elif defect == "big_endian":
        arrays[target] = arr.astype(arr.dtype.newbyteorder(">"))
    elif defect == "fortran":
        arrays[target] = np.asfortranarray(arr)
    elif defect == "mask_negative":
        arrays["mask"] = arrays["mask"].astype(np.int8) * -1
    elif defect == "mask_large_int":
        arrays["mask"] = arrays["mask"].astype(np.int64) * 300
    if defect == "zero_padded_id":
        names = {k: v.replace(f"CS{cid}_", f"CS0{cid}_") for k, v in names.items()}
    for key, data in arrays.items():
        if (defect == "missing_partner" and key == target) or (defect == "missing_mask" and key == "mask"):
            continue
        if defect == "orphan_mask" and key != "mask":
            continue
        name = names[key]
        if key == target and defect == "upper_case":
            name = name.upper()
        elif key == target and defect == "lower_case_name":
            name = name.lower().replace(".npy", ".NPY")
        path = folders[key] / name
        if key == target and defect == "pickled":
            np.save(path, np.array([{"voxels": data}], dtype=object), allow_pickle=True)   # deliberately pickled
        elif key == target and defect == "truncated":
            np.save(path, data)
            raw = path.read_bytes()
            path.write_bytes(raw[:max(1, len(raw) // 2)])
        elif key == target and defect == "empty_file":
            path.write_bytes(b"")
        elif key == target and defect == "not_npy":
            path.write_text("this is not an array\n")
        elif key == target and defect == "symlink_loop":
            path.symlink_to(path.name)
        elif key == target and defect == "broken_symlink":
            path.symlink_to("no-such-file.npy")
        elif key == target and defect == "folder":
            path.mkdir()
        elif key == target and defect == "huge_header":
            # a header promising 4 TB of voxels, followed by a few bytes
            np.save(path, data)
            raw = path.read_bytes()
            header = np.lib.format.header_data_from_array_1_0(data)
            header["shape"] = (100_000, 100_000, 100)
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, header)
            path.write_bytes(buf.getvalue() + raw[-64:])
        else:
            np.save(path, data)
        if key == target and defect == "duplicate_name":
            np.save(folders[key] / name.lower(), data)
    side = vol / f"CS{cid}.json"
    if defect == "sidecar_ok":
        side.write_text(json.dumps({"spacing_mm": [0.5, 0.5, 1.0], "note": "mine"}))
    elif defect == "sidecar_bad_json":
        side.write_text("{spacing_mm: [0.5,")
    elif defect == "sidecar_list":
        side.write_text("[0.5, 0.5, 1.0]")
    elif defect == "sidecar_spacing":
        side.write_text(json.dumps({"spacing_mm": [0.5, 0, 1.0]}))
    elif defect == "sidecar_upper":
        (vol / f"cs{cid}.JSON").write_text(json.dumps({"spacing_mm": [1, 1, 2]}))
    elif defect == "odd_extra_name":
        (vol / f"CS{cid}_CTA_Binary.npy.bak").write_bytes(b"old")
        (vol / "CS\u00fc_CTA_Binary.npy").write_bytes(b"x")
        (seg / f" CS{cid}_seg_corrected_binary.npy").write_bytes(b"x")
    elif defect == "extra_file":
        (vol / f"CS{cid}_extra.npy").write_bytes(b"junk")
        (seg / "README.txt").write_text("notes")


def _tree_hash(*folders: Path) -> str:
    """Names, kinds, link targets and bytes of everything under `folders` (links not followed)."""
    h = hashlib.sha256()
    for folder in folders:
        if not os.path.lexists(folder):
            h.update(f"{folder}: absent\n".encode())
            continue
        for root, dirs, files in os.walk(folder, followlinks=False):
            dirs.sort()
            h.update(f"D {os.path.relpath(root, folder)}\n".encode())
            for name in sorted(files):
                path = Path(root) / name
                h.update(f"F {name}\n".encode())
                if path.is_symlink():
                    h.update(os.readlink(path).encode())
                elif path.is_file():
                    h.update(path.read_bytes())
    return h.hexdigest()


@st.composite
def projects(draw):
    n = draw(st.integers(3, 6))
    shape = (draw(st.integers(6, 20)), draw(st.integers(6, 20)), draw(st.integers(1, 4)))
    # most cases are clean: 0-2 of them get a defect (some defects are harmless: another dtype,
    # upper-case names, a good sidecar); most config values are valid edge values
    defects = [("none", "CTA")] * n
    for _ in range(draw(st.integers(0, 2))):
        defects[draw(st.integers(0, n - 1))] = (draw(st.sampled_from(DEFECTS)),
                                                draw(st.sampled_from(["CTA", "NCCT", "mask"])))
    config = draw(st.lists(st.sampled_from(VALID_CONFIG), max_size=2, unique=True))
    if draw(st.integers(0, 2)) == 0:
        config.append(draw(st.sampled_from(INVALID_CONFIG)))
    seed = draw(st.integers(0, 2**16))
    return {"n": n, "shape": shape, "defects": defects, "config": config, "seed": seed}


def _write_project(root: Path, spec: dict) -> Path:
    vol, seg = root / VOL, root / SEG
    vol.mkdir(parents=True)
    seg.mkdir(parents=True)
    rng = np.random.default_rng(spec["seed"])
    for cid, (defect, target) in enumerate(spec["defects"], start=1):
        _write_case(vol, seg, cid, rng, spec["shape"], defect, target)
    lines = [(ROOT / "config.py").read_text(), "\n# fuzz\n"]
    lines += [f"{k} = {v}\n" for k, v in BASE.items()]
    for name, source in spec["config"]:
        lines.append(source + "\n" if name.startswith("__") else f"{name} = {source}\n")
    (root / "config.py").write_text("".join(lines))
    return root / "config.py"


def _prepare(config: Path) -> tuple[int, str, str]:
    import training

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.object(sys, "argv", ["training.py", "--config", str(config), "--prepare-only"]), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_main(training.main)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        else:  # pragma: no cover - run_main always exits
            code = 0
    return code, out.getvalue(), err.getvalue()


def _check_message(err: str) -> str:
    """The stop message: exactly one `ClotSeg stopped:` line, followed only by
    its listed items (`  - ...`)."""
    assert "Traceback" not in err, err
    start = err.find("ClotSeg stopped:")
    assert start >= 0, err
    assert err.count("ClotSeg stopped:") == 1, err
    head, *rest = err[start:].rstrip("\n").split("\n")
    assert head.strip() != "ClotSeg stopped:", err
    assert all(line.startswith("  - ") and line[4:].strip() for line in rest), err
    return head


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=projects())
def test_every_run_succeeds_or_stops_with_one_message_and_leaves_the_inputs_alone(spec):
    with tempfile.TemporaryDirectory(prefix="clotseg-fuzz-") as tmp:
        root = Path(tmp)
        config = _write_project(root, spec)
        before = _tree_hash(root / VOL, root / SEG)
        code, out, err = _prepare(config)
        assert code in (0, 2), (code, spec, out[-2000:], err[-4000:])
        if code == 2:
            event(f"stopped: {_check_message(err)[17:60]}")
        else:
            event("succeeded")
            assert "Traceback" not in err
            processed = Settings.from_file(config).processed_path
            for cohort in ("Training", "Validation"):
                assert read_manifest(processed / "Augmented" / cohort) is not None
        assert _tree_hash(root / VOL, root / SEG) == before, spec


def test_fuzz_helpers_detect_what_they_should(tmp_path):
    """The checks above would catch a traceback, a second message and a changed input."""
    with pytest.raises(AssertionError):
        _check_message("Traceback (most recent call last):\nClotSeg stopped: x")
    with pytest.raises(AssertionError):
        _check_message("ClotSeg stopped: a\nClotSeg stopped: b")
    with pytest.raises(AssertionError):
        _check_message("ClotSeg stopped: a\nstray line")
    assert _check_message("\nClotSeg stopped: 2 problems:\n  - a\n  - b\n").endswith("2 problems:")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.npy").write_bytes(b"1")
    before = _tree_hash(tmp_path / "a")
    (tmp_path / "a" / "x.npy").write_bytes(b"2")
    assert _tree_hash(tmp_path / "a") != before
