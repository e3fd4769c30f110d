"""Synthetic CTA/NCCT phantom (clotseg.phantom): determinism, layout, and
that the clot looks like a clot (dark gap on CTA, hyperdense on NCCT)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from clotseg.io import load_npy
from clotseg.phantom import is_clot_free, make_case, write_cohort

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(in_plane=(48, 64), slices=(8, 12), progress=False)
STAT_SHAPE, STAT_SPACING = (96, 96, 16), (0.5, 0.5, 1.5)


def _case(seed, index, with_clot=True, shape=STAT_SHAPE, spacing=STAT_SPACING):
    return make_case(np.random.default_rng([seed, index]), shape, spacing, with_clot)


@pytest.fixture(scope="module")
def clot_cases():
    """12 clot cases at a small size (a mix of hyperdense and iso-dense)."""
    return [_case(5, i) for i in range(12)]


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------- determinism
def test_same_seed_gives_identical_case_and_other_seed_differs():
    a, b, c = _case(1, 2), _case(1, 2), _case(1, 3)
    for name in ("cta", "ncct", "mask"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes()
    assert a.info == b.info
    assert not np.array_equal(a.cta, c.cta)


def test_cohort_is_deterministic_and_prefix_of_a_longer_one(tmp_path):
    d3, d4, again, other, tail = (tmp_path / n for n in ("three", "four", "again", "other", "tail"))
    ids3 = write_cohort(d3 / "vol", d3 / "seg", 3, seed=4, **SMALL)
    ids4 = write_cohort(d4 / "vol", d4 / "seg", 4, seed=4, **SMALL)
    assert ids3 == ["CS1", "CS2", "CS3"] and ids4 == ids3 + ["CS4"]
    write_cohort(again / "vol", again / "seg", 3, seed=4, **SMALL)
    assert _files(d3 / "vol") == _files(again / "vol") and _files(d3 / "seg") == _files(again / "seg")
    files4 = _files(d4 / "vol")
    assert all(files4[name] == data for name, data in _files(d3 / "vol").items())
    files4seg = _files(d4 / "seg")
    assert all(files4seg[name] == data for name, data in _files(d3 / "seg").items())
    # A cohort that starts at CS4 continues the first one case for case.
    assert write_cohort(tail / "vol", tail / "seg", 1, seed=4, first_id=4, **SMALL) == ["CS4"]
    assert _files(tail / "vol")["CS4_CTA_Binary.npy"] == files4["CS4_CTA_Binary.npy"]
    write_cohort(other / "vol", other / "seg", 3, seed=5, **SMALL)
    assert _files(other / "vol")["CS1_CTA_Binary.npy"] != files4["CS1_CTA_Binary.npy"]


# ----------------------------------------------------------------- shapes, dtypes, HU
def test_shapes_dtypes_and_hu_ranges(tmp_path):
    ids = write_cohort(tmp_path / "vol", tmp_path / "seg", 6, seed=2, in_plane=(40, 70), slices=(8, 14),
                       progress=False)
    shapes = set()
    for cid in ids:
        cta = load_npy(tmp_path / "vol" / f"{cid}_CTA_Binary.npy")
        ncct = load_npy(tmp_path / "vol" / f"{cid}_NCCT_Reg_Binary.npy")
        mask = load_npy(tmp_path / "seg" / f"{cid}_seg_corrected_binary.npy")
        h, w, d = cta.shape
        shapes.add(cta.shape)
        assert ncct.shape == mask.shape == cta.shape
        assert 40 <= h <= 70 and 40 <= w <= 70 and h % 2 == 0 and w % 2 == 0 and 8 <= d <= 14
        assert cta.dtype == ncct.dtype == np.float32 and mask.dtype == np.uint8
        for vol in (cta, ncct):
            assert np.isfinite(vol).all() and vol.min() >= -1024 and vol.max() <= 3071
            assert np.median(vol[0, 0, :]) < -900            # corner: air
            assert np.percentile(vol, 99.9) > 600            # skull
            brain = vol[h // 2 - 3:h // 2 + 3, w // 2 - 3:w // 2 + 3, :]
            assert -20 < np.median(brain) < 80               # soft tissue in the middle
        # Same anatomy on both (registered): air and bone where the other has them.
        assert np.mean((cta < -500) == (ncct < -500)) > 0.99
        assert np.mean((cta > 600) == (ncct > 600)) > 0.99
    assert len(shapes) > 1                                   # sizes vary per case


def test_default_ranges_stay_within_256_and_20_to_60_slices(tmp_path):
    ids = write_cohort(tmp_path / "vol", tmp_path / "seg", 1, seed=0, progress=False)
    h, w, d = load_npy(tmp_path / "vol" / f"{ids[0]}_CTA_Binary.npy", mmap=True).shape
    assert 96 <= h <= 256 and 96 <= w <= 256 and h % 2 == 0 and w % 2 == 0 and 20 <= d <= 60


@pytest.mark.parametrize("kwargs", [dict(in_plane=(96, 300)), dict(in_plane=(101, 101)), dict(slices=(30, 20)),
                                    dict(clot_free_fraction=1.5), dict(n_cases=0)])
def test_write_cohort_rejects_bad_arguments(tmp_path, kwargs):
    args = dict(n_cases=1, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError):
        write_cohort(tmp_path / "vol", tmp_path / "seg", **args)
    assert not (tmp_path / "vol").exists()


# ----------------------------------------------------------------- mask and clot
@pytest.mark.parametrize("with_clot", [True, False])
def test_mask_binary_and_non_empty_iff_clot(with_clot):
    for i in range(3):
        case = _case(8, i, with_clot=with_clot, shape=(64, 72, 12))
        assert case.mask.dtype == np.uint8 and set(np.unique(case.mask)) <= {0, 1}
        assert case.mask.any() == with_clot == case.info["has_clot"]
        assert case.info["clot_volume_voxels"] == int(case.mask.sum())
        assert (case.info["clot_vessel"] is not None) == with_clot
        assert (case.info["hyperdense"] is not None) == with_clot
        # The clot fills part of an artery's lumen.
        assert np.all(case.lumen[case.mask > 0] == 1)
        json.dumps(case.info)


def test_clot_is_a_dark_gap_in_the_bright_cta_lumen(clot_cases):
    gaps = []
    for case in clot_cases:
        clot = case.mask > 0
        lumen = (case.lumen > 0) & ~clot & (case.calcification == 0)
        gap = case.cta[lumen].mean() - case.cta[clot].mean()
        assert gap > 40, case.info
        # Still distinguishable from parenchyma on CTA (a filling defect, not nothing).
        assert case.cta[clot].mean() > 20
        gaps.append(gap)
    assert np.mean(gaps) > 100


def test_hyperdense_clots_are_brighter_than_blood_on_ncct(clot_cases):
    hyper, iso = [], []
    for case in clot_cases:
        clot = case.mask > 0
        blood = (case.lumen > 0) & ~clot & (case.calcification == 0)
        gap = case.ncct[clot].mean() - case.ncct[blood].mean()
        (hyper if case.info["hyperdense"] else iso).append(gap)
        # On NCCT the lumen holds blood, nowhere near the CTA contrast.
        assert case.ncct[blood].mean() < 60 < case.cta[blood].mean()
    assert hyper and iso, "the sample should hold both kinds of clot"
    assert min(hyper) > 2 and np.mean(hyper) > 5
    assert np.mean(iso) < np.mean(hyper) - 5


def test_clot_sits_mostly_in_mca_or_ica(clot_cases):
    sites = [c.info["clot_vessel"].split("_")[0] for c in clot_cases]
    assert sum(s in ("M1", "M2s", "M2i", "ICA") for s in sites) > len(sites) / 2


def test_calcifications_are_bright_on_both_and_never_in_the_mask():
    found = 0
    for i in range(12):
        case = _case(6, i, with_clot=i % 3 != 0, shape=(80, 80, 14))
        calc = case.calcification > 0
        assert calc.any() == (case.info["n_calcifications"] > 0)
        assert not (calc & (case.mask > 0)).any()
        labels, n = ndimage.label(calc)
        assert n <= case.info["n_calcifications"]
        for k in range(1, n + 1):
            spot = labels == k
            assert spot.sum() <= 27                              # a spot, not a plaque
            assert case.ncct[spot].max() > 130 and case.cta[spot].max() > 130
        found += n
    assert found > 0


# ----------------------------------------------------------------- clot-free cases
def test_clot_free_schedule():
    for n in range(7, 40):
        flags = [is_clot_free(i, 0.15) for i in range(1, n + 1)]
        assert 1 <= sum(flags) < n / 2
    assert not any(is_clot_free(i, 0.15) for i in range(1, 7))
    assert abs(np.mean([is_clot_free(i, 0.15) for i in range(1, 2001)]) - 0.15) < 0.01
    assert any(is_clot_free(i, 0.01) for i in range(1, 8))          # tiny fractions too
    assert abs(np.mean([is_clot_free(i, 0.01) for i in range(1, 2001)]) - 0.01) < 0.002
    assert not any(is_clot_free(i, 0.0) for i in range(1, 100))


# ----------------------------------------------------------------- files and CLI
def test_write_cohort_files_and_sidecars(tmp_path):
    vol, seg = tmp_path / "DL_vol_files" / "binary", tmp_path / "DL_seg_files" / "binary"
    ids = write_cohort(vol, seg, 7, seed=3, first_id=1, **SMALL)
    assert ids == [f"CS{i}" for i in range(1, 8)]
    expected_vol = {f"CS{i}{suffix}" for i in range(1, 8)
                    for suffix in ("_CTA_Binary.npy", "_NCCT_Reg_Binary.npy", ".json")}
    assert {p.name for p in vol.iterdir()} == expected_vol
    assert {p.name for p in seg.iterdir()} == {f"CS{i}_seg_corrected_binary.npy" for i in range(1, 8)}
    n_free = 0
    for cid in ids:
        side = json.loads((vol / f"{cid}.json").read_text())
        assert side["source"] == "clotseg phantom" and side["seed"] == 3
        row, col, sl = side["spacing_mm"]
        assert 0.4 <= row <= 0.6 and row == col and 1.0 <= sl <= 2.0
        mask = load_npy(seg / f"{cid}_seg_corrected_binary.npy")
        assert side["has_clot"] == bool(mask.any())
        assert side["clot_volume_voxels"] == int(mask.sum())
        assert list(load_npy(vol / f"{cid}_CTA_Binary.npy", mmap=True).shape) == side["shape"]
        n_free += not side["has_clot"]
    assert 1 <= n_free < 4


@pytest.mark.slow
def test_cli_writes_a_cohort_and_prints_one_summary_line(tmp_path):
    vol, seg = tmp_path / "vol", tmp_path / "seg"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "clotseg.phantom", "--cases", "2", "--seed", "9", "--volume-dir", str(vol),
           "--mask-dir", str(seg), "--in-plane", "48", "56", "--slices", "8", "10", "--first-id", "5", "--quiet"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and "2 cases" in lines[0] and "CS5" in lines[0]
    assert (vol / "CS6_NCCT_Reg_Binary.npy").is_file() and (seg / "CS5_seg_corrected_binary.npy").is_file()
    assert json.loads((vol / "CS5.json").read_text())["seed"] == 9
    # Same as the API would write.
    api = tmp_path / "api"
    write_cohort(api / "vol", api / "seg", 2, seed=9, first_id=5, in_plane=(48, 56), slices=(8, 10), progress=False)
    assert (api / "vol" / "CS6_CTA_Binary.npy").read_bytes() == (vol / "CS6_CTA_Binary.npy").read_bytes()

    bad = subprocess.run(cmd[:-1] + ["--in-plane", "96", "300"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "in_plane" in bad.stderr
