"""bench/subgroups.py: clot-case Dice by NCCT density, site and volume."""

import csv
import json

import pytest

from bench import subgroups

FIELDS = ["case_id", "dice", "true_voxels"]


def _cohort(tmp_path, cases):
    """cases: (case_id, dice, true_voxels, sidecar dict or None)."""
    test, vols = tmp_path / "Testing", tmp_path / "volumes"
    test.mkdir()
    vols.mkdir()
    with open(test / "metrics.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(FIELDS)
        for cid, dice, voxels, side in cases:
            w.writerow([cid, dice, voxels])
            if side is not None:
                (vols / f"{cid}.json").write_text(json.dumps(side))
    return test, vols


def test_groups_clot_cases_by_density_site_and_volume(tmp_path):
    test, vols = _cohort(tmp_path, [
        ("CS1", 0.8, 200, {"has_clot": True, "hyperdense": True, "clot_vessel": "M1_L", "clot_volume_mm3": 150}),
        ("CS2", 0.0, 40, {"has_clot": True, "hyperdense": False, "clot_vessel": "M2s_R", "clot_volume_mm3": 12}),
        ("CS3", 0.4, 90, {"has_clot": True, "hyperdense": False, "clot_vessel": "BA", "clot_volume_mm3": 45}),
        ("CS4", 1.0, 0, {"has_clot": False}),          # a control: not a clot case
        ("CS5", 0.5, 30, None),                          # no sidecar: "unknown" everywhere
    ])
    assert subgroups.main([str(test), str(vols), "--out", str(tmp_path / "s.json")]) == 0
    got = json.loads((tmp_path / "s.json").read_text())
    assert got["hyperdense"]["False"] == {"n": 2, "dice_mean": pytest.approx(0.2), "found": 1,
                                          "dice_found_mean": pytest.approx(0.4)}
    assert got["hyperdense"]["True"] == {"n": 1, "dice_mean": pytest.approx(0.8), "found": 1,
                                         "dice_found_mean": pytest.approx(0.8)}
    # all clot cases: mean Dice = share found x Dice of the found ones
    assert got["all"]["clot cases"] == {"n": 4, "dice_mean": pytest.approx(0.425), "found": 3,
                                        "dice_found_mean": pytest.approx(1.7 / 3)}
    assert got["site"]["M2"]["dice_found_mean"] is None             # nothing found: no mean to report
    assert set(got["site"]) == {"M1/ICA", "M2", "other", "unknown"}
    assert got["site"]["other"]["n"] == 1 and got["site"]["M2"]["found"] == 0
    assert got["volume"]["< 30 mm^3"]["n"] == 1 and got["volume"][">= 100 mm^3"]["n"] == 1
    assert got["volume"]["30-100 mm^3"]["dice_mean"] == pytest.approx(0.4)
    assert sum(g["n"] for g in got["hyperdense"].values()) == 4     # the control is left out


@pytest.mark.parametrize("what", ["testing", "volumes"])
def test_a_missing_folder_is_one_line_and_exit_2(tmp_path, capsys, what):
    test, vols = _cohort(tmp_path, [("CS1", 0.5, 10, {"has_clot": True})])
    args = [str(tmp_path / "nope"), str(vols)] if what == "testing" else [str(test), str(tmp_path / "nope")]
    with pytest.raises(SystemExit) as exc:
        subgroups.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "nope" in err and len(err.splitlines()) == 1


def test_a_broken_sidecar_is_one_line_and_exit_2(tmp_path, capsys):
    test, vols = _cohort(tmp_path, [("CS1", 0.5, 10, {"has_clot": True})])
    (vols / "CS1.json").write_text("{broken")
    with pytest.raises(SystemExit) as exc:
        subgroups.main([str(test), str(vols)])
    assert exc.value.code == 2
    assert "not valid JSON" in capsys.readouterr().err


def _volumes(vols, masks, cid, ncct_clot, cta_clot, lumen=False):
    """A 12^3 case: tissue at 30 HU (NCCT) / 40 HU (CTA), a 2x2x2 clot at
    the given HU; with `lumen`, a 300 HU CTA vessel touching the clot."""
    import numpy as np

    ncct = np.full((12, 12, 12), 30, np.int16)
    cta = np.full((12, 12, 12), 40, np.int16)
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[5:7, 5:7, 5:7] = 1
    ncct[mask > 0], cta[mask > 0] = ncct_clot, cta_clot
    if lumen:
        cta[7:9, 5:7, :] = 300          # beside the clot, in its shell: not soft tissue
    number = cid[2:]
    np.save(vols / f"CS{number}_NCCT_Reg_Binary.npy", ncct)
    np.save(vols / f"CS{number}_CTA_Binary.npy", cta)
    np.save(masks / f"CS{number}_seg_corrected_binary.npy", mask)


def test_contrast_groups_measure_the_clot_against_the_soft_tissue_around_it(tmp_path):
    test, vols = _cohort(tmp_path, [("CS1", 0.0, 8, {"has_clot": True}), ("CS2", 0.9, 8, {"has_clot": True}),
                                    ("CS3", 1.0, 0, {"has_clot": False}), ("CS4", 0.7, 8, {"has_clot": True})])
    masks = tmp_path / "masks"
    masks.mkdir()
    _volumes(vols, masks, "CS1", ncct_clot=35, cta_clot=52, lumen=True)    # +5 HU NCCT, +12 HU CTA
    _volumes(vols, masks, "CS2", ncct_clot=60, cta_clot=70)                # +30 HU on both
    _volumes(vols, masks, "CS4", ncct_clot=45, cta_clot=65)                # +15 HU NCCT, +25 HU CTA
    assert subgroups.main([str(test), str(vols), "--masks", str(masks), "--out", str(tmp_path / "s.json")]) == 0
    got = json.loads((tmp_path / "s.json").read_text())
    assert got["NCCT contrast"]["< 10 HU"] == {"n": 1, "dice_mean": 0.0, "found": 0, "dice_found_mean": None}
    assert got["NCCT contrast"][">= 20 HU"]["n"] == 1 and got["NCCT contrast"][">= 20 HU"]["found"] == 1
    # the 300 HU lumen beside CS1's clot is left out of its surroundings: +12, not far below 0
    assert got["CTA contrast"]["10-20 HU"]["n"] == 1 and got["CTA contrast"][">= 20 HU"]["n"] == 2
    assert list(got["NCCT contrast"]) == ["< 10 HU", "10-20 HU", ">= 20 HU"]   # low to high, not alphabetically
    assert "NCCT contrast" not in subgroups.subgroups({}, {})     # only with --masks


def test_contrast_is_none_without_soft_tissue_around_the_clot():
    import numpy as np

    truth = np.zeros((6, 6, 6), bool)
    truth[2:4, 2:4, 2:4] = True
    cta = np.full(truth.shape, 300.0)            # all lumen around it
    assert subgroups.contrast_hu(cta, truth, subgroups.tissue_shell(truth, cta)) is None
    assert subgroups.tissue_shell(np.zeros_like(truth), cta) is None
    cta[:] = 40.0
    cta[truth] = 45.0
    assert subgroups.contrast_hu(cta, truth, subgroups.tissue_shell(truth, cta)) == pytest.approx(5.0)


def test_a_missing_masks_folder_is_one_line_and_exit_2(tmp_path, capsys):
    test, vols = _cohort(tmp_path, [("CS1", 0.5, 10, {"has_clot": True})])
    with pytest.raises(SystemExit) as exc:
        subgroups.main([str(test), str(vols), "--masks", str(tmp_path / "nope")])
    assert exc.value.code == 2
    assert "nope" in capsys.readouterr().err
