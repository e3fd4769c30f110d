"""Synthetic CTA/NCCT phantom (clotseg.phantom): determinism, layout, that
the clot looks like a clot (dark gap on CTA; hyperdense on NCCT when drawn
so), that every domain-randomised feature varies per case, and that the
"shifted" domain differs from the standard one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from clotseg.io import load_npy
from clotseg.phantom import _draw_params, is_clot_free, make_case, write_cohort

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(in_plane=(48, 64), slices=(8, 12), progress=False)
STAT_SHAPE, STAT_SPACING = (96, 96, 16), (0.5, 0.5, 1.5)
SHIFT_SPACING = (0.7, 0.7, 3.0)


def _case(seed, index, with_clot=True, shape=STAT_SHAPE, spacing=STAT_SPACING, domain="standard"):
    return make_case(np.random.default_rng([seed, index]), shape, spacing, with_clot, domain=domain)


@pytest.fixture(scope="module")
def clot_cases():
    """16 standard clot cases at a small size."""
    return [_case(5, i) for i in range(16)]


@pytest.fixture(scope="module")
def shifted_cases():
    """8 shifted-domain clot cases at a small size."""
    return [_case(5, i, spacing=SHIFT_SPACING, domain="shifted") for i in range(8)]


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _first_indices(seed, domain, pred, n, limit=200):
    """The first n case indices whose drawn parameters satisfy pred (the
    parameters are the case rng's first draws, so this is cheap)."""
    out = [i for i in range(limit) if pred(_draw_params(np.random.default_rng([seed, i]), domain))][:n]
    assert len(out) == n
    return out


def _noise_estimate(vol):
    """Robust noise level in the brain's centre: MAD of a high-pass residual."""
    h, w, _ = vol.shape
    core = vol[h // 2 - 12:h // 2 + 12, w // 2 - 12:w // 2 + 12, :]
    res = core - ndimage.uniform_filter(core, (3, 3, 1))
    return 1.4826 * float(np.median(np.abs(res - np.median(res))))


# ----------------------------------------------------------------- determinism
@pytest.mark.parametrize("domain", ["standard", "shifted"])
def test_same_seed_gives_identical_case_and_other_seed_differs(domain):
    a, b, c = (_case(1, i, shape=(64, 64, 12), domain=domain) for i in (2, 2, 3))
    for name in ("cta", "ncct", "mask"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes()
    assert a.info == b.info and a.info["domain"] == domain
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


def test_shifted_cohort_is_a_prefix_too_and_differs_from_standard(tmp_path):
    s2, s3, std = (tmp_path / n for n in ("s2", "s3", "std"))
    write_cohort(s2 / "vol", s2 / "seg", 2, seed=4, domain="shifted", **SMALL)
    write_cohort(s3 / "vol", s3 / "seg", 3, seed=4, domain="shifted", **SMALL)
    write_cohort(std / "vol", std / "seg", 2, seed=4, **SMALL)
    f3 = _files(s3 / "vol")
    assert all(f3[name] == data for name, data in _files(s2 / "vol").items())
    assert f3["CS1_CTA_Binary.npy"] != _files(std / "vol")["CS1_CTA_Binary.npy"]
    side = json.loads((s3 / "vol" / "CS1.json").read_text())
    assert side["domain"] == "shifted"
    row, col, sl = side["spacing_mm"]
    assert 0.6 <= row <= 0.8 and row == col and 2.5 <= sl <= 4.0


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
        # Same anatomy on both, up to the small residual misregistration.
        assert np.mean((cta < -500) == (ncct < -500)) > 0.9
        assert np.mean((cta > 600) == (ncct > 600)) > 0.8
    assert len(shapes) > 1                                   # sizes vary per case


def test_default_ranges_stay_within_256_and_20_to_60_slices(tmp_path):
    ids = write_cohort(tmp_path / "vol", tmp_path / "seg", 1, seed=0, progress=False)
    h, w, d = load_npy(tmp_path / "vol" / f"{ids[0]}_CTA_Binary.npy", mmap=True).shape
    assert 96 <= h <= 256 and 96 <= w <= 256 and h % 2 == 0 and w % 2 == 0 and 20 <= d <= 60


@pytest.mark.parametrize("kwargs", [dict(in_plane=(96, 300)), dict(in_plane=(101, 101)), dict(slices=(30, 20)),
                                    dict(clot_free_fraction=1.5), dict(n_cases=0), dict(domain="other")])
def test_write_cohort_rejects_bad_arguments(tmp_path, kwargs):
    args = dict(n_cases=1, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError):
        write_cohort(tmp_path / "vol", tmp_path / "seg", **args)
    assert not (tmp_path / "vol").exists()


def test_make_case_rejects_unknown_domain():
    with pytest.raises(ValueError, match="domain"):
        _case(0, 0, shape=(32, 32, 4), domain="Standard")


# ----------------------------------------------------------------- mask and clot
@pytest.mark.parametrize("domain", ["standard", "shifted"])
@pytest.mark.parametrize("with_clot", [True, False])
def test_mask_binary_and_non_empty_iff_clot(with_clot, domain):
    spacing = STAT_SPACING if domain == "standard" else SHIFT_SPACING
    for i in range(3):
        case = _case(8, i, with_clot=with_clot, shape=(64, 72, 12), spacing=spacing, domain=domain)
        for m in (case.mask, case.ncct_mask):
            assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
        assert case.mask.any() == with_clot == case.info["has_clot"]
        assert case.info["clot_volume_voxels"] == int(case.mask.sum())
        assert (case.info["clot_vessel"] is not None) == with_clot
        assert (case.info["hyperdense"] is not None) == with_clot
        assert (case.info["clot_segments"] >= 1) == with_clot
        # The clot fills part of an artery's lumen, never a calcification.
        assert np.all(case.lumen[case.mask > 0] == 1)
        assert not (case.mask & case.calcification).any()
        json.dumps(case.info)


def test_clot_is_a_dark_gap_in_the_bright_cta_lumen(clot_cases):
    overall, near_gaps = [], []
    for case in clot_cases:
        clot = case.mask > 0
        lumen = (case.lumen > 0) & ~clot & (case.calcification == 0)
        gap = case.cta[lumen].mean() - case.cta[clot].mean()
        assert gap > 30, case.info
        near = ndimage.binary_dilation(clot, iterations=3) & lumen
        near_gaps.append(np.median(case.cta[near]) - np.median(case.cta[clot]))
        # Still distinguishable from parenchyma on CTA (a filling defect, not nothing).
        assert case.cta[clot].mean() > 15
        overall.append(gap)
    assert np.mean(overall) > 100
    # Hard but not impossible: right next to the clot, most gaps stay clear.
    assert np.mean(np.array(near_gaps) > 40) >= 0.75


def test_hyperdense_clots_are_brighter_than_blood_on_ncct_others_are_not(clot_cases):
    hyper, other = [], []
    for case in clot_cases:
        clot = case.ncct_mask > 0                     # the clot where the (misregistered) NCCT has it
        blood = (case.ncct_lumen > 0) & ~clot
        gap = np.median(case.ncct[clot]) - np.median(case.ncct[blood])
        (hyper if case.info["hyperdense"] else other).append(gap)
        assert 30 <= case.info["clot_ncct_hu"] <= 80
        assert 38 <= case.info["blood_ncct_hu"] <= 45
        assert 0 <= case.info["clot_perviousness_hu"] <= 80
        # On NCCT the lumen holds blood, nowhere near the CTA contrast.
        assert np.median(case.ncct[blood]) < 70 < np.median(case.cta[(case.lumen > 0) & (case.mask == 0)])
    assert hyper and other, "the sample should hold both kinds of clot"
    assert 0.2 <= len(other) / len(clot_cases) <= 0.7            # ~40% not hyperdense
    assert np.mean(hyper) > 5
    assert np.mean(other) < np.mean(hyper) - 5
    assert min(c.info["clot_ncct_hu"] - c.info["blood_ncct_hu"] for c in clot_cases) < 0   # some hypodense


def test_clot_sits_mostly_in_mca_or_ica(clot_cases):
    sites = [c.info["clot_vessel"].split("_")[0] for c in clot_cases]
    assert sum(s in ("M1", "M2s", "M2i", "ICA") for s in sites) > len(sites) / 2


def test_some_cases_have_two_separate_clot_segments():
    for i in _first_indices(6, "standard", lambda p: p["two_clots"], 2):
        case = _case(6, i)
        assert case.info["clot_segments"] == 2
        assert ndimage.label(case.mask, structure=np.ones((3, 3, 3)))[1] >= 2
    share = np.mean([_draw_params(np.random.default_rng([6, i]), "standard")["two_clots"] for i in range(400)])
    assert 0.09 < share < 0.19


def test_clot_lengths_span_small_to_large(clot_cases):
    lengths = [c.info["clot_length_mm"] for c in clot_cases]
    assert min(lengths) < 6 and max(lengths) > 12 and max(lengths) <= 30


def test_calcifications_are_bright_on_both_and_never_in_the_mask():
    found, inside = 0, 0
    for i in range(10):
        case = _case(6, i, with_clot=i % 3 != 0, shape=(80, 80, 14))
        calc = case.calcification > 0
        assert calc.any() == (case.info["n_calcifications"] > 0)
        assert not (calc & (case.mask > 0)).any()
        labels, n = ndimage.label(calc)
        assert n <= case.info["n_calcifications"]
        for k in range(1, n + 1):
            spot = labels == k
            assert case.cta[spot].max() > 100
        inside += int((calc & (case.lumen > 0)).sum())
        found += n
    assert found > 0 and inside > 0                      # on the wall and inside the lumen


# ----------------------------------------------------------------- randomisation
def test_every_randomised_feature_varies_across_a_small_cohort(clot_cases):
    info = [c.info for c in clot_cases]

    def spread(key, f=lambda x: x):
        values = [f(i[key]) for i in info]
        return min(values), max(values)

    lo, hi = spread("lumen_cta_hu")
    assert lo < 260 and hi > 380 and 150 <= lo and hi <= 500
    lo, hi = spread("calibre_scale")
    assert lo < 0.9 and hi > 1.2 and 0.7 <= lo and hi <= 1.4
    lo, hi = spread("tortuosity")
    assert lo < 0.3 and hi > 0.7
    lo, hi = spread("clot_perviousness_hu")
    assert lo < 10 and hi > 30
    lo, hi = spread("noise_cta_hu")
    assert hi / lo > 2.5
    lo, hi = spread("noise_ncct_hu")
    assert hi / lo > 2.0
    lo, hi = spread("psf_cta", lambda x: x[1])
    assert lo < 0.7 and hi > 0.9
    lo, hi = spread("slice_blur_sigma_vox")
    assert hi - lo > 0.15
    lo, hi = spread("misreg_shift_vox")
    assert lo < 0.7 and hi > 1.3 and hi <= 2.0
    lo, hi = spread("misreg_rotation_deg")
    assert lo < 1.0 and hi > 2.0 and hi <= 3.0
    lo, hi = spread("grey_white_hu", lambda x: x[0] - x[1])
    assert lo < 8 and hi > 10
    assert len({i["n_calcifications"] for i in info}) > 3
    assert any(i["n_skull_base_bone"] > 0 for i in info) and any(i["n_skull_base_bone"] == 0 for i in info)
    assert all(i["n_veins"] >= 4 for i in info)                    # the dural sinuses at least
    assert any(i["infarct"] for i in info) and not all(i["infarct"] for i in info)
    assert any(not i["clot_occlusive"] for i in info) and any(i["clot_occlusive"] for i in info)
    # And in the images themselves, not only in the parameters.
    est = [_noise_estimate(c.cta) for c in clot_cases]
    assert max(est) / min(est) > 2
    assert any(not np.array_equal(c.mask, c.ncct_mask) for c in clot_cases)      # misregistered NCCT


def test_clot_free_cases_have_empty_masks_and_sometimes_an_infarct_confounder():
    for i in _first_indices(2, "standard", lambda p: p["infarct_u"] < p["p_infarct"][1], 1):
        case = _case(2, i, with_clot=False, shape=(64, 64, 12))
        assert case.info["infarct"] and not case.mask.any() and not case.ncct_mask.any()
        assert case.info["clot_segments"] == 0 and case.info["clot_vessel"] is None


# ----------------------------------------------------------------- shifted domain
def test_shifted_domain_draws_outside_the_standard_ranges(clot_cases, shifted_cases):
    for case in shifted_cases:
        i = case.info
        assert i["domain"] == "shifted" and i["noise_texture"] == "bandpass"
        assert not 0.7 <= i["calibre_scale"] <= 1.4
        assert not 150 <= i["lumen_cta_hu"] <= 500
        assert i["misreg_shift_vox"] >= 2.0 and i["misreg_rotation_deg"] >= 3.0
        assert i["psf_cta"][0] in ("sharp", "tail")
        assert not 38 <= i["blood_ncct_hu"] <= 45
        assert case.mask.any() and not (case.mask & case.calcification).any()
    for case in clot_cases:
        assert case.info["domain"] == "standard" and case.info["noise_texture"] == "gauss"
        assert case.info["psf_cta"][0] == "gauss"
    # Different clot sites: MCA and ICA dominate the standard sample, less so the shifted one.
    def mca_ica(cases):
        return np.mean([c.info["clot_vessel"].split("_")[0] in ("M1", "M2s", "M2i", "ICA") for c in cases])
    assert mca_ica(shifted_cases) < mca_ica(clot_cases)


# ----------------------------------------------------------------- clot-free schedule
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
    n_free, slices = 0, set()
    for cid in ids:
        side = json.loads((vol / f"{cid}.json").read_text())
        assert side["source"] == "clotseg phantom" and side["seed"] == 3 and side["domain"] == "standard"
        row, col, sl = side["spacing_mm"]
        assert 0.4 <= row <= 0.6 and row == col and 0.75 <= sl <= 2.5
        slices.add(sl)
        mask = load_npy(seg / f"{cid}_seg_corrected_binary.npy")
        assert side["has_clot"] == bool(mask.any())
        assert side["clot_volume_voxels"] == int(mask.sum())
        assert list(load_npy(vol / f"{cid}_CTA_Binary.npy", mmap=True).shape) == side["shape"]
        n_free += not side["has_clot"]
    assert 1 <= n_free < 4
    assert len(slices) > 3


@pytest.mark.slow
def test_cli_writes_a_cohort_and_prints_one_summary_line(tmp_path):
    vol, seg = tmp_path / "vol", tmp_path / "seg"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "clotseg.phantom", "--cases", "2", "--seed", "9", "--volume-dir", str(vol),
           "--mask-dir", str(seg), "--in-plane", "48", "56", "--slices", "8", "10", "--first-id", "5", "--quiet",
           "--domain", "shifted"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and "2 cases" in lines[0] and "CS5" in lines[0] and "shifted" in lines[0]
    assert (vol / "CS6_NCCT_Reg_Binary.npy").is_file() and (seg / "CS5_seg_corrected_binary.npy").is_file()
    side = json.loads((vol / "CS5.json").read_text())
    assert side["seed"] == 9 and side["domain"] == "shifted"
    # Same as the API would write.
    api = tmp_path / "api"
    write_cohort(api / "vol", api / "seg", 2, seed=9, first_id=5, in_plane=(48, 56), slices=(8, 10),
                 progress=False, domain="shifted")
    assert (api / "vol" / "CS6_CTA_Binary.npy").read_bytes() == (vol / "CS6_CTA_Binary.npy").read_bytes()

    bad = subprocess.run(cmd + ["--in-plane", "96", "300"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "in_plane" in bad.stderr
    bad = subprocess.run(cmd[:-1] + ["sideways"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "domain" in bad.stderr
