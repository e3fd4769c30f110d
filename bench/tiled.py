"""Whole-slice against sliding-window inference of one trained run.

    python -m bench.tiled RUN_DIR VOLUMES_DIR MASKS_DIR [--tile 64] [--out F.json]

A model trained on PATCH_SIZE patches predicts whole slices in testing.py.
With batch normalisation that is sound (its statistics are fixed after
training); an instance-normalised network (NORMALIZATION = "instance")
normalises every feature map over the image it is given, so a whole
slice is normalised over other statistics than the patches it learnt on.
nnU-Net therefore predicts in overlapping tiles of the training patch size.
This scores both on a labelled cohort with the plain post-processing (0.5,
no TTA, no filter) and the scoring conventions of testing.py: clot-case
mean Dice, clots found, false-positive components per case, clot-free
cases with an alarm. Tiles overlap by half and their probabilities are
averaged (uniform weights).
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


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels every `stride` pixels along an
    axis of `size` pixels, the last one flush with the end (so every pixel
    is covered); [0] when the tile is not smaller than the axis."""
    if tile >= size:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def predict_tiled(predict, samples: np.ndarray, tile: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """Average of `predict` over overlapping tiles.

    predict: (N, th, tw, C) uint8 -> (N, th, tw, K) float32 probabilities;
    samples: (N, H, W, C). Returns (N, H, W, K) float32, every pixel the
    mean over the tiles that cover it.
    """
    n, h, w, _ = samples.shape
    th, tw = min(tile[0], h), min(tile[1], w)
    total = count = None
    for r in tile_starts(h, th, stride[0]):
        for c in tile_starts(w, tw, stride[1]):
            prob = predict(np.ascontiguousarray(samples[:, r:r + th, c:c + tw]))
            if total is None:
                total = np.zeros((n, h, w, prob.shape[-1]), np.float32)
                count = np.zeros((1, h, w, 1), np.float32)
            total[:, r:r + th, c:c + tw] += prob
            count[:, r:r + th, c:c + tw] += 1
    return total / count


def summarise(rows: list[tuple[bool, float, int]]) -> dict:
    """rows: (has clot, Dice, FP components) per case -> the cohort's figures."""
    clot = [r for r in rows if r[0]]
    free = [r for r in rows if not r[0]]
    return {"clot_dice_mean": float(np.mean([r[1] for r in clot])) if clot else None,
            "clots_found": sum(r[1] > 0 for r in clot), "n_clot_cases": len(clot),
            "fp_components_per_case": float(np.mean([r[2] for r in rows])) if rows else None,
            "controls_with_alarm": sum(r[2] > 0 for r in free), "n_controls": len(free)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="finished training run folder")
    parser.add_argument("volumes", type=Path, help="labelled cohort's volume folder")
    parser.add_argument("masks", type=Path, help="its mask folder")
    parser.add_argument("--tile", type=int, nargs="+", default=None,
                        help="tile rows [cols] (default: the run's PATCH_SIZE)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    from clotseg.cohort import discover_cases, load_case
    from clotseg.errors import ClotSegError
    from clotseg.evaluation.metrics import case_metrics
    from clotseg.inference import predict_samples
    from clotseg.intensity import center_crop, model_inputs, volume_to_samples
    from clotseg.layout import load_run_settings
    from clotseg.stages.evaluate import load_model
    from clotseg.stages.train import inference_copy

    try:  # a wrong folder or run is a user's mistake: one line, exit status 2
        trained = load_run_settings(args.run, ROOT).replace(volume_dir=str(args.volumes.resolve()),
                                                            mask_dir=str(args.masks.resolve()))
        tile = tuple(args.tile * 2 if args.tile and len(args.tile) == 1 else args.tile or trained.patch_size or ())
        if len(tile) != 2:
            raise ClotSegError("the run has no PATCH_SIZE: give --tile ROWS [COLS]")
        cases = discover_cases(trained, require_masks=True, warn=lambda *_: None)
        whole_model = load_model(args.run)
        # the saved model takes whole slices; the same weights in a network built for the tile
        tile_model = inference_copy(whole_model, trained.replace(input_shape=(*tile, trained.input_shape[2])))
    except (FileNotFoundError, ClotSegError) as exc:
        parser.exit(2, f"bench.tiled: {exc}\n")
    windows = [trained.windows_hu[m] for m in trained.modalities]
    stride = (max(1, tile[0] // 2), max(1, tile[1] // 2))
    rows = {"whole": [], "tiled": []}
    for case in cases:
        volumes, truth = load_case(case)
        truth = truth > 0
        h, w, _ = volumes[0].shape
        gaps = case.slice_gaps() or None
        samples = model_inputs(volume_to_samples(volumes, windows, trained.input_shape[:2]),
                               trained.context_slices, trained.symmetry_channels, gaps)
        probs = {"whole": predict_samples(whole_model, samples, 32),
                 "tiled": predict_tiled(lambda x: predict_samples(tile_model, x, 64), samples, tile, stride)}
        for name, prob in probs.items():
            pred = center_crop(np.moveaxis(prob, 0, 2), (h, w))[..., 0] > 0.5
            m = case_metrics(pred, truth, slice_gaps=gaps)
            rows[name].append((bool(truth.any()), float(m["dice"]), int(m["n_false_positive_components"])))
    result = {"tile": list(tile), "stride": list(stride), **{k: summarise(v) for k, v in rows.items()}}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    print("\n| inference | clot-case Dice | clots found | FP components/case | controls with an alarm |\n"
          "| --- | --- | --- | --- | --- |")
    for name in ("whole", "tiled"):
        s = result[name]
        dice = "-" if s["clot_dice_mean"] is None else f"{s['clot_dice_mean']:.3f}"
        print(f"| {name} | {dice} | {s['clots_found']}/{s['n_clot_cases']} | {s['fp_components_per_case']:.2f} | "
              f"{s['controls_with_alarm']}/{s['n_controls']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
