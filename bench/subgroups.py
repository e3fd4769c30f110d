"""Clot-case Dice by subgroup of a scored phantom cohort.

    python -m bench.subgroups TESTING_DIR VOLUMES_DIR [--out F.json]

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
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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


def subgroups(rows: dict[str, dict], sidecars: dict[str, dict]) -> dict:
    """{grouping: {group: {"n", "dice_mean", "found", "dice_found_mean"}}} over
    the clot cases; "dice_found_mean" is None for a group with none found."""
    groups: dict[str, dict[str, list[float]]] = {"all": {}, "hyperdense": {}, "site": {}, "volume": {}}
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
    return {g: {k: _summary(v) for k, v in sorted(by.items())} for g, by in groups.items()}


def _summary(dices: list[float]) -> dict:
    found = [d for d in dices if d > 0]
    return {"n": len(dices), "dice_mean": sum(dices) / len(dices), "found": len(found),
            "dice_found_mean": sum(found) / len(found) if found else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("testing", type=Path, help="testing folder with metrics.csv")
    parser.add_argument("volumes", type=Path, help="the cohort's volume folder with <case>.json sidecars")
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
    except (FileNotFoundError, InputDataError) as exc:   # InputDataError names the sidecar and its problem
        parser.exit(2, f"bench.subgroups: {exc}\n")
    result = subgroups(rows, sidecars)
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
