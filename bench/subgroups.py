"""Clot-case Dice by subgroup of a scored phantom cohort.

    python -m bench.subgroups TESTING_DIR VOLUMES_DIR [--masks MASKS_DIR] [--out F.json]

TESTING_DIR is a testing output folder (its `metrics.csv`, as testing.py
and bench/quality.py write it); VOLUMES_DIR the cohort's volumes with the
phantom's `<case>.json` sidecars. Clot cases (sidecar `has_clot`) are
grouped by NCCT density (`hyperdense`), clot site (M1/ICA, M2, other:
A1/A2/P1/P2/basilar) and clot volume (< 30, 30-100, >= 100 mm^3), and
all together; for each group it prints the number of cases, the mean Dice,
how many were found (Dice > 0) and the mean Dice of the found ones. The last
splits a mean Dice into detection and overlap: mean Dice = share found x
Dice of the found clots, so it says how far finding every clot alone would
go. A case without a sidecar or without the field is counted under
"unknown".

With --masks (the cohort's mask folder) the clot cases are also grouped by
the contrast the images show, whatever the generator meant: the mean NCCT
HU inside the clot minus the mean of the soft tissue around it (a shell 2-3
voxels out, CTA between 0 and 150 HU there, so neither lumen, bone nor air
counts), < 10, 10-20 or >= 20 HU, and the same on the CTA
(`tissue_shell`, `contrast_hu`). A clot a few HU above its surroundings on both is a
filling defect with next to nothing on either image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.compare import read_metrics  # noqa: E402
from clotseg.cohort import read_sidecar  # noqa: E402
from clotseg.errors import InputDataError  # noqa: E402


def _site(vessel) -> str:
    kind = str(vessel or "").split("_")[0]
    if not kind:
        return "unknown"
    return "M1/ICA" if kind in ("M1", "ICA") else ("M2" if kind.startswith("M2") else "other")


def _volume(mm3) -> str:
    if mm3 is None:
        return "unknown"
    return "< 30 mm^3" if mm3 < 30 else ("30-100 mm^3" if mm3 < 100 else ">= 100 mm^3")


# (inner, outer) radius in voxels of the shell around a clot that `tissue_shell`
# builds: one voxel is left out, the clot's partial-volume edge.
SHELL_VOXELS = (1, 3)
# Soft tissue on the CTA: above air and fat, below opacified lumen (>= 150 HU,
# ../shared/reference/clinical.md) and bone.
TISSUE_CTA_HU = (0.0, 150.0)


def tissue_shell(truth: np.ndarray, cta: np.ndarray) -> np.ndarray | None:
    """The soft tissue of the shell SHELL_VOXELS around the clot (26-connected
    dilations, in voxels): bool (h, w, D), `truth` bool, `cta` in HU (it decides
    what is soft tissue). None without clot voxels or without soft tissue there."""
    from scipy import ndimage as ndi

    if not truth.any():
        return None
    ball = np.ones((3, 3, 3), dtype=bool)
    inner, outer = SHELL_VOXELS
    near = ndi.binary_dilation(truth, ball, iterations=inner)
    shell = ndi.binary_dilation(near, ball, iterations=outer - inner) & ~near   # grown on from `near`, not again
    shell &= (cta > TISSUE_CTA_HU[0]) & (cta < TISSUE_CTA_HU[1])
    return shell if shell.any() else None


def contrast_hu(volume: np.ndarray, truth: np.ndarray, shell: np.ndarray | None) -> float | None:
    """Mean HU of `volume` inside the clot minus the mean over its `shell`
    (`tissue_shell`; None: nothing to compare with, and None is returned);
    (h, w, D), `truth` and `shell` bool."""
    if shell is None:
        return None
    return float(volume[truth].mean() - volume[shell].mean())


def _contrast(hu) -> str:
    if hu is None:
        return "unknown"
    return "< 10 HU" if hu < 10 else ("10-20 HU" if hu < 20 else ">= 20 HU")


def subgroups(rows: dict[str, dict], sidecars: dict[str, dict], contrasts: dict[str, dict] | None = None) -> dict:
    """{grouping: {group: {"n", "dice_mean", "found", "dice_found_mean"}}} over
    the clot cases; "dice_found_mean" is None for a group with none found.
    `contrasts`: per case {"NCCT": HU, "CTA": HU} (`contrast_hu`, None where
    it could not be measured) adds the groupings "NCCT contrast" and "CTA
    contrast"."""
    groups: dict[str, dict[str, list[float]]] = {"all": {}, "hyperdense": {}, "site": {}, "volume": {}}
    if contrasts is not None:
        groups.update({"NCCT contrast": {}, "CTA contrast": {}})
    for cid, row in rows.items():
        side = sidecars.get(cid)
        side = side if isinstance(side, dict) else {}
        if not side.get("has_clot", float(row.get("true_voxels") or 0) > 0):
            continue
        dice = float(row["dice"])
        hyper = side.get("hyperdense")
        for grouping, key in (("all", "clot cases"), ("hyperdense", "unknown" if hyper is None else str(bool(hyper))),
                              ("site", _site(side.get("clot_vessel"))),
                              ("volume", _volume(side.get("clot_volume_mm3")))):
            groups[grouping].setdefault(key, []).append(dice)
        if contrasts is not None:
            for modality in ("NCCT", "CTA"):
                key = _contrast((contrasts.get(cid) or {}).get(modality))
                groups[f"{modality} contrast"].setdefault(key, []).append(dice)
    return {g: {k: _summary(v) for k, v in sorted(by.items(), key=_in_order)} for g, by in groups.items()}


# the bins of a grouping from low to high (the rest alphabetically, after them)
BIN_ORDER = ("< 30 mm^3", "30-100 mm^3", ">= 100 mm^3", "< 10 HU", "10-20 HU", ">= 20 HU")


def _in_order(item) -> tuple:
    key = item[0]
    return (BIN_ORDER.index(key) if key in BIN_ORDER else len(BIN_ORDER), key)


def _summary(dices: list[float]) -> dict:
    found = [d for d in dices if d > 0]
    return {"n": len(dices), "dice_mean": sum(dices) / len(dices), "found": len(found),
            "dice_found_mean": sum(found) / len(found) if found else None}


def measure_contrasts(rows: dict[str, dict], volumes: Path, masks: Path) -> dict[str, dict]:
    """{case: {"NCCT": HU, "CTA": HU}} of the clot cases (`contrast_hu`), read
    with the default file names (config.py's MODALITY_PATTERNS and MASK_PATTERN)."""
    from clotseg.io import load_npy
    from clotseg.settings import Settings

    if not masks.is_dir():
        raise FileNotFoundError(f"{masks}: no such folder")
    names = Settings()
    out = {}
    for cid in rows:
        if float(rows[cid].get("true_voxels") or 0) <= 0:
            continue
        number = cid[len(names.case_prefix):]
        mask_path = masks / names.mask_pattern.replace("<ID>", number)
        paths = {m: volumes / names.modality_patterns[m].replace("<ID>", number) for m in ("CTA", "NCCT")}
        if not mask_path.is_file() or not all(p.is_file() for p in paths.values()):
            continue                                     # counted under "unknown"
        truth = load_npy(mask_path) > 0
        cta = load_npy(paths["CTA"]).astype(np.float32)
        ncct = load_npy(paths["NCCT"]).astype(np.float32)
        shell = tissue_shell(truth, cta)                 # once for both modalities
        out[cid] = {"CTA": contrast_hu(cta, truth, shell), "NCCT": contrast_hu(ncct, truth, shell)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("testing", type=Path, help="testing folder with metrics.csv")
    parser.add_argument("volumes", type=Path, help="the cohort's volume folder with <case>.json sidecars")
    parser.add_argument("--masks", type=Path, default=None,
                        help="the cohort's mask folder: also group by the clot's measured NCCT and CTA contrast")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    try:  # a wrong folder is a user's mistake: one line, exit status 2
        rows = read_metrics(args.testing)
        if not args.volumes.is_dir():
            raise FileNotFoundError(f"{args.volumes}: no such folder")
        sidecars = {}
        for cid in rows:
            path = args.volumes / f"{cid}.json"
            if path.is_file():
                sidecars[cid] = read_sidecar(path, cid)
        contrasts = measure_contrasts(rows, args.volumes, args.masks) if args.masks is not None else None
    except (FileNotFoundError, InputDataError) as exc:   # InputDataError names the sidecar and its problem
        parser.exit(2, f"bench.subgroups: {exc}\n")
    result = subgroups(rows, sidecars, contrasts)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    print("\n| grouping | group | clot cases | mean Dice | found | Dice of the found |\n| --- | --- | --- | --- | --- | --- |")
    for grouping, by in result.items():
        for key, g in by.items():
            found_dice = "-" if g["dice_found_mean"] is None else f"{g['dice_found_mean']:.3f}"
            print(f"| {grouping} | {key} | {g['n']} | {g['dice_mean']:.3f} | {g['found']}/{g['n']} | {found_dice} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
