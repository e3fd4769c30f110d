"""How close a trained model came to each clot it missed.

    python -m bench.missed RUN_DIR TESTING_DIR VOLUMES_DIR MASKS_DIR [--out F.json]

RUN_DIR is a finished training run (its Best_Model and Relevant_Files);
TESTING_DIR a testing folder of that run (its `metrics.csv`); VOLUMES_DIR
and MASKS_DIR the scored cohort's volumes (with the phantom's `<case>.json`
sidecars, when there are any) and masks. For every clot case with Dice 0
it predicts the volume again as testing.py does (the run's windows, 2.5D
context and flip TTA) and prints the case's clot site, volume and NCCT
density (from the sidecar) with the highest flip-averaged probability
inside the clot and the share of clot voxels above 0.1 and 0.3. A miss
whose highest probability stays under the tuner's lowest threshold (0.3)
is one no post-processing choice can recover: the network does not see it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.compare import read_metrics  # noqa: E402


def missed_cases(rows: dict[str, dict]) -> list[str]:
    """Case ids of the clot cases (true voxels > 0) with Dice 0, sorted."""
    return sorted(cid for cid, row in rows.items()
                  if float(row.get("true_voxels") or 0) > 0 and float(row.get("dice") or 0) == 0)


def probability_inside(prob: np.ndarray, truth: np.ndarray) -> dict:
    """Highest probability and the shares above 0.1 and 0.3 inside `truth`
    (both (h, w, D); truth bool with at least one voxel)."""
    inside = prob[truth]
    return {"max_probability": float(inside.max()), "share_above_0.1": float(np.mean(inside > 0.1)),
            "share_above_0.3": float(np.mean(inside > 0.3)), "clot_voxels": int(truth.sum())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="finished training run folder")
    parser.add_argument("testing", type=Path, help="testing folder of that run, with metrics.csv")
    parser.add_argument("volumes", type=Path, help="the scored cohort's volume folder")
    parser.add_argument("masks", type=Path, help="the scored cohort's mask folder")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    from clotseg.cohort import discover_cases, load_case, read_sidecar
    from clotseg.errors import ClotSegError
    from clotseg.inference import predict_volume
    from clotseg.layout import load_run_settings
    from clotseg.stages.evaluate import load_model

    try:  # a wrong folder, run or sidecar is a user's mistake: one line, exit status 2
        rows = read_metrics(args.testing)
        trained = load_run_settings(args.run, ROOT).replace(volume_dir=str(args.volumes.resolve()),
                                                            mask_dir=str(args.masks.resolve()))
        wanted = set(missed_cases(rows))
        cases = [c for c in discover_cases(trained, require_masks=True, warn=lambda *_: None)
                 if c.case_id in wanted]
        model = load_model(args.run)
        windows = [trained.windows_hu[m] for m in trained.modalities]
        result = {}
        for case in cases:
            volumes, truth = load_case(case)
            prob = predict_volume(model, volumes, windows, trained.input_shape[:2], batch_size=32, tta_flips=True,
                                  context_slices=trained.context_slices, symmetry=trained.symmetry_channels,
                                  slice_gaps=case.slice_gaps() or None)[..., 0]
            side = read_sidecar(case.sidecar, case.case_id) if case.sidecar else {}
            result[case.case_id] = {"site": side.get("clot_vessel"), "volume_mm3": side.get("clot_volume_mm3"),
                                    "hyperdense": side.get("hyperdense"), **probability_inside(prob, truth > 0)}
    except (FileNotFoundError, ClotSegError) as exc:
        parser.exit(2, f"bench.missed: {exc}\n")
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"\n{len(result)} missed clot case(s) of {sum(float(r.get('true_voxels') or 0) > 0 for r in rows.values())}")
    print("| case | site | volume mm^3 | hyperdense | clot voxels | max probability | > 0.1 | > 0.3 |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")
    for cid, r in result.items():
        vol = "-" if r["volume_mm3"] is None else f"{r['volume_mm3']:.0f}"
        print(f"| {cid} | {r['site'] or '-'} | {vol} | {r['hyperdense']} | {r['clot_voxels']} | "
              f"{r['max_probability']:.2f} | {r['share_above_0.1']:.2f} | {r['share_above_0.3']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
