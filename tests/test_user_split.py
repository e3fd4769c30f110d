"""User-supplied split (SPLIT_FILE) and group-preserving split (GROUP_BY)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import quiet, tiny_settings, write_cohort

from clotseg.errors import InputDataError
from clotseg.pipeline import prepare_data
from clotseg.stages.split import read_split_file, run_split, split_groups

ROOT = Path(__file__).resolve().parent.parent
IDS = [f"CS{i}" for i in range(1, 7)]
GIVEN = {"CS1": "Training", "CS2": "training", "CS3": "Training", "CS4": "Validation", "CS5": "Testing",
         "CS6": "test"}
WANT = {"Training": ["CS1", "CS2", "CS3"], "Validation": ["CS4"], "Testing": ["CS5", "CS6"]}


@pytest.mark.parametrize("form", ["json", "json_cohorts", "csv", "csv_header"])
def test_split_file_forms(tmp_path, form):
    if form == "json":
        path = tmp_path / "split.json"
        path.write_text(json.dumps(GIVEN))
    elif form == "json_cohorts":                    # split.json's own format works too
        path = tmp_path / "split.json"
        path.write_text(json.dumps({"cohorts": {"Training": ["cs1", "CS2", "CS3"], "Validation": ["CS4"],
                                                "Testing": ["CS5", "CS6"]}}))
    else:
        path = tmp_path / "split.csv"
        head = "case,cohort\n" if form == "csv_header" else ""
        path.write_text(head + "".join(f"{c},{k}\n" for c, k in GIVEN.items()))
    assert read_split_file(path, IDS) == WANT


@pytest.mark.parametrize("change, words", [
    ({"CS99": "Training"}, "not in the cohort (CS99)"),
    ({"CS6": None}, "not named (CS6)"),
    ({"CS6": "holdout"}, "cohort names other than"),
    ({"CS4": "Testing"}, "no case in Validation"),
])
def test_split_file_problems_are_one_line(tmp_path, change, words):
    given = dict(GIVEN)
    for k, v in change.items():
        if v is None:
            given.pop(k)
        else:
            given[k] = v
    path = tmp_path / "split.json"
    path.write_text(json.dumps(given))
    with pytest.raises(InputDataError) as err:
        read_split_file(path, IDS)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_split_file_is_honoured_by_the_pipeline_and_changes_rebuild(tmp_path):
    s = tiny_settings(tmp_path, split_file="my_split.csv")
    write_cohort(s)
    (tmp_path / "my_split.csv").write_text("".join(f"{c},{k}\n" for c, k in GIVEN.items()))
    out = prepare_data(s, log=quiet, demo_if_empty=False)
    assert out["cohorts"] == WANT
    saved = json.loads((s.processed_path / "split.json").read_text())
    assert saved["split_file"].endswith("my_split.csv") and saved["cohorts"] == WANT
    (tmp_path / "my_split.csv").write_text("".join(f"{c},{'Testing' if c == 'CS3' else k}\n"
                                                   for c, k in GIVEN.items()))
    out = prepare_data(s, log=quiet, demo_if_empty=False)
    assert out["cohorts"]["Testing"] == ["CS3", "CS5", "CS6"]


def test_bad_split_file_exits_2_with_one_line(tmp_path):
    config = tmp_path / "config.py"
    config.write_text("INPUT_SHAPE = (64, 64, 2)\nTARGET_SAMPLE_SIZE_AUG_TRAIN = 16\nTARGET_SAMPLE_SIZE_AUG_VAL = 8\n"
                      "NUM_WORKERS = 1\nBATCH_SIZE = 8\nSPLIT_FILE = 'split.json'\n")
    write_cohort(tiny_settings(tmp_path))
    (tmp_path / "split.json").write_text(json.dumps({**GIVEN, "CS42": "Training"}))
    out = subprocess.run([sys.executable, str(ROOT / "training.py"), "--config", str(config), "--prepare-only"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("ClotSeg stopped")]
    assert len(lines) == 1 and "CS42" in lines[0] and "Traceback" not in out.stderr
    assert out.stderr.strip().endswith(lines[0])           # the message is the last and only such line
    assert not (tmp_path / "Processed" / "split.json").exists()


def test_split_groups_keep_each_group_in_one_cohort():
    ids = [f"CS{i}" for i in range(1, 21)]
    groups = {c: f"site{i % 5}" for i, c in enumerate(ids)}
    for seed in range(5):
        cohorts = split_groups(ids, groups, 0.6, 0.2, seed)
        assert sorted(sum(cohorts.values(), [])) == sorted(ids)
        where = {}
        for name, cases in cohorts.items():
            assert cases, name
            for c in cases:
                assert where.setdefault(groups[c], name) == name
    with pytest.raises(InputDataError, match="at least 3"):
        split_groups(ids, {c: "a" if i < 10 else "b" for i, c in enumerate(ids)}, 0.6, 0.2, 0)


def test_group_by_reads_sidecars_in_the_pipeline(tmp_path):
    s = tiny_settings(tmp_path, group_by="site")
    ids = write_cohort(s, n=9)
    for i, c in enumerate(ids):
        (s.volume_path / f"{c}.json").write_text(json.dumps({"site": f"H{i % 3}"}))
    out = prepare_data(s, log=quiet, demo_if_empty=False)
    sites = {name: {f"H{(int(c[2:]) - 1) % 3}" for c in cases} for name, cases in out["cohorts"].items()}
    assert all(len(v) == 1 for v in sites.values()) and len(set.union(*sites.values())) == 3
    (s.volume_path / "CS1.json").write_text(json.dumps({"other": 1}))
    with pytest.raises(InputDataError, match="no 'site'"):
        run_split(s, ids, quiet, groups=__import__("clotseg.stages.split", fromlist=["x"]).case_groups(
            [type("C", (), {"case_id": "CS1", "sidecar": s.volume_path / "CS1.json"})()], "site"))
