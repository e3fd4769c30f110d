"""bench/quality.py: its helpers, and its whole machinery at the "tiny" scale
(plumbing only: the figures of a seconds-long training mean nothing)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bench import quality
from tests.conftest import ROOT


def _summary(dice_mean=0.7, sens=0.9, fp=0.25, spec=0.75):
    return {"metrics_clot_cases": {"dice": {"mean": dice_mean, "median": dice_mean + 0.05, "ci_low": dice_mean - 0.1,
                                            "ci_high": dice_mean + 0.1},
                                   "hd95": {"median": 3.5, "unit": "mm"}},
            "detection": {"case_sensitivity": sens, "lesion_sensitivity": sens, "fp_components_per_case": fp,
                          "specificity": spec, "n_clot_cases": 8, "n_clot_free_cases": 2}}


def test_parse_overrides_reads_python_literals_and_plain_strings():
    got = quality.parse_overrides(["CONTEXT_SLICES=0", "model=unet", "INPUT_SHAPE=(64, 64, 2)",
                                   "MAX_TRAINING_MINUTES=None", "LR_SCHEDULE='poly'", "AUG_P=0.5"])
    assert got == {"CONTEXT_SLICES": 0, "MODEL": "unet", "INPUT_SHAPE": (64, 64, 2), "MAX_TRAINING_MINUTES": None,
                   "LR_SCHEDULE": "poly", "AUG_P": 0.5}
    assert quality.parse_overrides([]) == {} and quality.parse_overrides(None) == {}
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        quality.parse_overrides(["CONTEXT_SLICES"])


def test_headline_takes_the_clot_case_and_detection_figures():
    h = quality.headline(_summary())
    assert set(quality.HEADLINE) <= set(h)
    assert h["dice_mean"] == 0.7 and h["dice_ci"] == [pytest.approx(0.6), pytest.approx(0.8)]
    assert h["case_sensitivity"] == 0.9 and h["fp_components_per_case"] == 0.25 and h["specificity"] == 0.75
    assert h["hd95_median"] == 3.5 and h["hd95_unit"] == "mm"
    assert (h["n_clot_cases"], h["n_clot_free_cases"]) == (8, 2)


def _result(r, dice, seconds):
    return {"repeat": r, "training_seconds": seconds,
            "cohorts": {"standard": {**quality.headline(_summary(dice_mean=dice)), "testing_seconds": 1.0}}}


def test_spread_and_markdown_over_repeats():
    results = [_result(0, 0.6, 100.0), _result(1, 0.8, 120.0), _result(2, 0.7, 110.0)]
    sp = quality.spread(results)
    assert sp["standard"]["dice_mean"] == {"mean": pytest.approx(0.7), "min": 0.6, "max": 0.8}
    assert sp["training_seconds"] == {"mean": pytest.approx(110.0), "min": 100.0, "max": 120.0}
    report = {"label": "ctx0", "scale": "cpu", "preset": "cpu", "overrides": {"CONTEXT_SLICES": 0},
              "repeats": results, "spread": sp}
    text = quality.markdown(report)
    lines = text.splitlines()
    assert lines[0].startswith("### ctx0 (scale cpu, preset cpu")
    table = [l for l in lines if l.startswith("| ")]
    assert len(table) == 2 + 3           # header, rule, one row per repeat
    assert table[2].startswith("| 0 | standard | 0.600 [0.500, 0.700] |")
    assert all(row.count("|") == table[0].count("|") for row in table)
    assert "Spread over repeats" in text and "dice_mean 0.700 (0.600..0.800)" in text


def test_markdown_of_one_repeat_has_no_spread_and_prints_missing_values():
    res = _result(0, 0.5, None)
    res["cohorts"]["standard"]["specificity"] = None
    text = quality.markdown({"label": "x", "scale": "tiny", "preset": None, "overrides": {}, "repeats": [res],
                             "spread": None})
    assert "Spread" not in text
    row = [l for l in text.splitlines() if l.startswith("| 0 |")][0]
    assert "| - (2 controls) |" in row and row.endswith("| - |")


@pytest.mark.slow
def test_tiny_benchmark_runs_end_to_end(tmp_path):
    out = tmp_path / "result.json"
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "bench.quality", "--scale", "tiny", "--test-domains", "standard,first-build",
           "--set", "CONTEXT_SLICES=0", "--label", "tiny-ctx0", "--workdir", str(work), "--out", str(out)]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    report = json.loads(out.read_text())
    assert report["label"] == "tiny-ctx0" and report["scale"] == "tiny"
    assert report["overrides"] == {"CONTEXT_SLICES": 0}
    assert report["spread"] is None and len(report["repeats"]) == 1
    rep = report["repeats"][0]
    assert rep["epochs_done"] == 1 and rep["training_seconds"] > 0
    assert set(rep["postprocessing"]) == {"threshold", "tta_flips", "min_component_voxels", "keep_largest_component",
                                         "min_component_peak", "max_vessel_distance_mm", "max_component_cta_hu"}
    assert list(rep["cohorts"]) == ["standard", "first-build"]    # as --test-domains asked, no shifted
    fig = rep["cohorts"]["standard"]
    assert set(quality.HEADLINE) <= set(fig)
    assert fig["n_clot_cases"] + fig["n_clot_free_cases"] == quality.SCALES["tiny"]["test_cases"]
    for key in ("dice_mean", "dice_median", "case_sensitivity"):
        assert 0.0 <= fig[key] <= 1.0, key
    lo, hi = fig["dice_ci"]
    assert lo <= fig["dice_mean"] <= hi
    assert fig["fp_components_per_case"] >= 0
    settings = rep["settings"]
    assert settings["CONTEXT_SLICES"] == 0                          # the override reached the run
    assert settings["INPUT_SHAPE"] == [64, 64, 2] and settings["EPOCHS"] == 1
    assert settings["MAX_TRAINING_MINUTES"] == quality.SCALES["tiny"]["budget_minutes"]
    assert "PRESETS" not in settings

    # stdout: the same JSON object, then the Markdown table
    stdout = proc.stdout
    start = stdout.index("{\n")
    table_at = stdout.index("### tiny-ctx0")
    assert json.loads(stdout[start:table_at]) == report
    rows = [l for l in stdout[table_at:].splitlines() if l.startswith("| ")]
    assert rows[0].startswith("| repeat | test cohort | clot-case Dice mean [95% CI]")
    assert rows[2].startswith("| 0 | standard |") and rows[3].startswith("| 0 | first-build |") and len(rows) == 4

    # the test cohort lives apart from the training project and was scored there
    project = work / "repeat0"
    assert (project / "test_standard" / "volumes").is_dir()
    assert not (project / "test_shifted").exists()
    assert (project / "Testing_standard" / "summary.json").is_file()
    assert (project / "Testing_first-build" / "summary.json").is_file()
    run = project / "Trainings" / rep["run"]
    post = json.loads((run / "postprocessing.json").read_text())
    split = json.loads((project / "Processed" / "split.json").read_text())
    assert sorted(post["cases"]) == sorted(split["cohorts"]["Validation"])   # tuned on Validation only


def test_first_build_domain_is_another_generator_in_the_input_layout(tmp_path):
    """The first-build test cohort comes from the frozen first phantom, not
    clotseg.phantom, with its own seed, in the layout testing.py reads."""
    scale = quality.SCALES["tiny"]
    quality._write_phantom(tmp_path / "fb" / "v", tmp_path / "fb" / "m", 3, 4000, scale, "first-build")
    quality._write_phantom(tmp_path / "st" / "v", tmp_path / "st" / "m", 3, 4000, scale, "standard")
    for cid in ("CS1", "CS2", "CS3"):
        for name in (f"{cid}_CTA_Binary.npy", f"{cid}_NCCT_Reg_Binary.npy", f"{cid}.json"):
            assert (tmp_path / "fb" / "v" / name).is_file()
        assert (tmp_path / "fb" / "m" / f"{cid}_seg_corrected_binary.npy").is_file()
    fb = json.loads((tmp_path / "fb" / "v" / "CS1.json").read_text())
    st = json.loads((tmp_path / "st" / "v" / "CS1.json").read_text())
    assert "domain" not in fb and st["domain"] == "standard"      # the first build had no domains
    assert set(quality.TEST_DOMAINS) == {"standard", "shifted", "first-build"}
    assert len(set(quality.TEST_DOMAINS.values())) == 3             # a seed range of its own


@pytest.mark.slow
@pytest.mark.parametrize("domain", ["standard", "first-build"])
def test_cohort_written_by_parallel_writers_equals_one_writer(tmp_path, monkeypatch, domain):
    """With many cores the cohort is written in spawned processes over id
    ranges: byte for byte the files one process writes."""
    scale = quality.SCALES["tiny"]
    n = 3 * quality.CASES_PER_WRITER
    quality._write_chunk(tmp_path / "one" / "v", tmp_path / "one" / "m", 1, n, 7, scale, domain)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)  # 3 writers over CS1-8, CS9-16, CS17-24
    quality._write_phantom(tmp_path / "par" / "v", tmp_path / "par" / "m", n, 7, scale, domain)

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    one, par = files(tmp_path / "one"), files(tmp_path / "par")
    assert len(one) == 4 * n and one.keys() == par.keys()
    assert all(one[k] == par[k] for k in one)


class _Stop(Exception):
    pass


@pytest.fixture
def cohort_calls(monkeypatch):
    """(n, seed, domain) of every cohort run_once writes; training stops at prepare_data (_Stop)."""
    calls = []
    monkeypatch.setattr(quality, "_write_phantom",
                        lambda vol, mask, n, seed, scale, domain: calls.append((n, seed, domain)))
    import clotseg.pipeline

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(clotseg.pipeline, "prepare_data", stop)
    return calls


def test_train_domain_writes_the_training_cohort_with_that_generator(tmp_path, cohort_calls):
    """--train-domain first-build: the training cohort (seed 1000 + repeat)
    comes from the other generator; the test cohorts keep their own seeds."""
    with pytest.raises(_Stop):
        quality.run_once("tiny", None, {}, 1, tmp_path, ("first-build",), train_domain="first-build")
    assert [c[1:] for c in cohort_calls] == [(1001, "first-build"), (4001, "first-build")]
    cohort_calls.clear()
    with pytest.raises(_Stop):
        quality.run_once("tiny", None, {}, 0, tmp_path, ("standard",))
    assert [c[1:] for c in cohort_calls] == [(1000, "standard"), (2000, "standard")]


def test_train_cases_replaces_the_scales_training_cohort_size(tmp_path, monkeypatch, cohort_calls):
    """--train-cases N writes N training cases (the test cohorts keep the
    scale's size) and the report names the size it trained on."""
    with pytest.raises(_Stop):
        quality.run_once("tiny", None, {}, 0, tmp_path, ("first-build",), train_cases=9)
    tiny = quality.SCALES["tiny"]
    assert [c[:2] for c in cohort_calls] == [(9, 1000), (tiny["test_cases"], 4000)]
    cohort_calls.clear()
    with pytest.raises(_Stop):
        quality.run_once("tiny", None, {}, 0, tmp_path, ("first-build",))
    assert cohort_calls[0][:2] == (tiny["train_cases"], 1000)

    seen = []

    def fake_run_once(*args, train_cases=None, **kwargs):
        seen.append(train_cases)
        return {"repeat": 0, "training_seconds": 1.0, "cohorts": {}}

    monkeypatch.setattr(quality, "run_once", fake_run_once)
    out = tmp_path / "r.json"
    assert quality.main(["--scale", "tiny", "--train-cases", "12", "--workdir", str(tmp_path),
                         "--out", str(out)]) == 0
    assert seen == [12] and json.loads(out.read_text())["train_cases"] == 12
    assert quality.main(["--scale", "tiny", "--workdir", str(tmp_path), "--out", str(out)]) == 0
    assert seen[-1] is None and json.loads(out.read_text())["train_cases"] == tiny["train_cases"]


def test_set_random_seed_replaces_config_seed_and_keeps_the_cohorts(tmp_path, monkeypatch, cohort_calls):
    """--set RANDOM_SEED=N: repeat r's settings take N + r (its split, initialisation and sample
    order: another model of the same training cohort), while the cohorts keep their seeds."""
    import clotseg.pipeline

    seeds = []

    def stop(settings, *args, **kwargs):
        seeds.append(settings.random_seed)
        raise _Stop

    monkeypatch.setattr(clotseg.pipeline, "prepare_data", stop)
    with pytest.raises(_Stop):
        quality.run_once("tiny", None, {"RANDOM_SEED": 142}, 1, tmp_path, ("first-build",))
    with pytest.raises(_Stop):
        quality.run_once("tiny", None, {}, 1, tmp_path, ("first-build",))
    from clotseg.settings import Settings

    assert seeds == [143, Settings.from_file(quality.ROOT / "config.py").random_seed + 1]
    assert [c[1] for c in cohort_calls] == [1001, 4001, 1001, 4001]


def test_first_repeat_runs_only_the_later_seeds(tmp_path, monkeypatch):
    """--first-repeat 2 --repeats 1 runs repeat 2 alone (seed offset 2), so a
    third seed lands beside an earlier call's repeat0 and repeat1."""
    seen = []

    def fake_run_once(scale, preset, overrides, repeat, workdir, *args, **kwargs):
        seen.append((repeat, workdir))
        return {"repeat": repeat, "training_seconds": 1.0, "cohorts": {}}

    monkeypatch.setattr(quality, "run_once", fake_run_once)
    assert quality.main(["--scale", "tiny", "--first-repeat", "2", "--workdir", str(tmp_path),
                         "--out", str(tmp_path / "r.json")]) == 0
    assert seen == [(2, tmp_path)]
    assert [r["repeat"] for r in json.loads((tmp_path / "r.json").read_text())["repeats"]] == [2]
    seen.clear()
    quality.main(["--scale", "tiny", "--repeats", "2", "--workdir", str(tmp_path)])
    assert [r for r, _ in seen] == [0, 1]


def test_cta_mips_are_the_slab_maximum_beside_each_cta_and_kept_when_there(tmp_path):
    from scipy import ndimage

    rng = np.random.default_rng(0)
    cta = rng.normal(40, 100, (6, 5, 7)).astype(np.float32)
    np.save(tmp_path / "CS3_CTA_Binary.npy", cta)
    np.save(tmp_path / "CS3_NCCT_Reg_Binary.npy", cta)
    assert quality.write_cta_mips(tmp_path, 3) == 1
    mip = np.load(tmp_path / "CS3_CTAMIP_Binary.npy")
    assert mip.dtype == np.float32 and mip.shape == cta.shape
    # slice z holds the maximum of slices z-1..z+1 (the edge slices repeat)
    np.testing.assert_array_equal(mip[..., 3], cta[..., 2:5].max(axis=-1))
    np.testing.assert_array_equal(mip[..., 0], cta[..., 0:2].max(axis=-1))
    np.testing.assert_array_equal(mip, ndimage.maximum_filter1d(cta, 3, axis=2, mode="nearest"))
    assert quality.write_cta_mips(tmp_path, 5) == 0                    # an existing file is kept
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "CS3_CTAMIP_Binary.npy", "CS3_CTA_Binary.npy", "CS3_NCCT_Reg_Binary.npy"]


def test_slice_view_moves_the_slice_axis_of_volumes_masks_and_sidecar(tmp_path, capsys):
    import json

    vol, msk = tmp_path / "volumes", tmp_path / "masks"
    vol.mkdir()
    msk.mkdir()
    rng = np.random.default_rng(0)
    cta = rng.normal(40, 100, (6, 5, 4)).astype(np.float32)
    mask = (rng.random((6, 5, 4)) > 0.8).astype(np.uint8)
    np.save(vol / "CS3_CTA_Binary.npy", cta)
    np.save(vol / "CS3_NCCT_Reg_Binary.npy", cta + 1)
    np.save(msk / "CS3_seg_corrected_binary.npy", mask)
    np.save(vol / "CS30_CTA_Binary.npy", cta[:3])                  # another case, no sidecar: not CS3's
    (vol / "CS3.json").write_text(json.dumps({"shape": [6, 5, 4], "spacing_mm": [0.5, 0.6, 2.0], "seed": 7}))
    assert quality.slice_view(vol, msk, 2) == 0                     # axial: nothing to do
    assert quality.slice_view(vol, msk, 1) == 3                     # sagittal planes (rows x slices)
    sag = np.load(vol / "CS3_CTA_Binary.npy")
    assert sag.shape == (6, 4, 5) and sag.dtype == np.float32
    np.testing.assert_array_equal(np.moveaxis(sag, -1, 1), cta)
    np.testing.assert_array_equal(np.load(vol / "CS3_NCCT_Reg_Binary.npy"), np.moveaxis(cta + 1, 1, -1))
    np.testing.assert_array_equal(np.load(msk / "CS3_seg_corrected_binary.npy"), np.moveaxis(mask, 1, -1))
    assert np.load(vol / "CS30_CTA_Binary.npy").shape == (3, 5, 4)
    side = json.loads((vol / "CS3.json").read_text())
    assert side["shape"] == [6, 4, 5] and side["spacing_mm"] == [0.5, 2.0, 0.6] and side["slice_axis"] == 1
    assert side["seed"] == 7
    assert quality.slice_view(vol, msk, 1) == 0                     # a second call leaves it alone
    np.testing.assert_array_equal(np.load(vol / "CS3_CTA_Binary.npy"), sag)
    assert quality.slice_axis_of(tmp_path / "nowhere") == 2
    np.save(msk / "CS3_seg_corrected_binary.npy", mask[:2])          # neither order: one line, exit 2
    side.pop("slice_axis")
    (vol / "CS3.json").write_text(json.dumps(side))
    with pytest.raises(SystemExit) as exc:
        quality.slice_view(vol, msk, 1)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CS3_seg_corrected_binary.npy: shape (2, 5, 4)" in err


@pytest.mark.parametrize("bad, message", [
    (["--test-domains", "standard,nonsense"], "unknown nonsense"),
    (["--train-domain", "nonsense"], "--train-domain: unknown nonsense"),
    (["--train-cases", "0"], "--train-cases must be at least 5"),
    (["--train-cases", "4"], "--train-cases must be at least 5"),
    (["--train-cases", "-3"], "--train-cases must be at least 5"),
    (["--cta-mip-slices", "2"], "--cta-mip-slices must be an odd number of at least 3"),
    (["--cta-mip-slices", "1"], "--cta-mip-slices must be an odd number of at least 3"),
    (["--cta-mip-slices", "-3"], "--cta-mip-slices must be an odd number of at least 3"),
    (["--set", "RANDOM_SEED=x"], "--set RANDOM_SEED expects an integer of at least 0"),
    (["--set", "RANDOM_SEED=-1"], "--set RANDOM_SEED expects an integer of at least 0"),
    (["--slice-axis", "3"], "--slice-axis must be 0, 1 or 2"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--first-repeat", "-1"], "--repeats must be at least 1"),
])
def test_bad_options_are_one_line_and_exit_status_2(bad, message, capsys):
    with pytest.raises(SystemExit) as exc:
        quality.main(["--scale", "tiny", *bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("rate", ["-0.1", "1.0"])
def test_throughput_benchmark_refuses_a_dropout_outside_0_1(rate, capsys):
    from bench import benchmark

    with pytest.raises(SystemExit) as exc:
        benchmark.main(["--only", "training", "--dropout", rate])
    assert exc.value.code == 2
    assert f"--dropout must be in [0, 1), got {float(rate)}" in capsys.readouterr().err


def test_throughput_benchmark_cpu_size_is_the_cpu_presets_network(tmp_path):
    from bench import benchmark
    from clotseg.settings import Settings

    preset = Settings.from_file(ROOT / "config.py", preset="cpu")
    cfg = benchmark.SIZES["cpu"]
    # the benchmark trains on whole samples: the preset's patches are its input
    assert tuple(cfg["input_shape"][:2]) == tuple(preset.patch_size)
    assert (cfg["base_filters"], cfg["depth"], cfg["batch_size"]) == (preset.base_filters, preset.depth,
                                                                       preset.batch_size)
    forced = benchmark.make_settings(tmp_path, cfg, mixed_precision=True, context_slices=1)
    assert forced.mixed_precision is True and forced.model_input_shape == (64, 64, 6)
    assert benchmark.make_settings(tmp_path, cfg).mixed_precision == "auto"
    # --dropout reaches the network's settings; without it config.py's DROPOUT stands
    assert benchmark.make_settings(tmp_path, cfg, dropout=0.0).dropout == 0.0
    assert benchmark.make_settings(tmp_path, cfg).dropout == Settings.from_file(ROOT / "config.py").dropout
