"""Score any folder of predictions with ClotSeg's metrics, biomarkers and report.

    python -m clotseg.evaluate --pred DIR --truth DIR [--volumes DIR] [--out DIR]

The score and render steps of testing.py on their own (like nnU-Net's
compute_metrics_on_folder), for another tool's output or a re-scoring:

  --pred     predictions: <case>_pred.npy (or .nii.gz / .nii), or files
             named exactly like the truth files
  --truth    truth masks named like MASK_PATTERN (config.py), else
             <case>.npy / <case>.nii.gz
  --volumes  optional: the cases' volumes named like MODALITY_PATTERNS, with
             their <case>.json sidecars: HU biomarkers, spacing, overlays
  --out      where metrics.csv, summary.json, the figures and report.html go
             (default: a folder <pred>_scores beside the predictions folder;
             files there of the same names are replaced, nothing else is removed)

Matching rules, units and conventions: clotseg/evaluation/scoring.py and the
README ("Scoring another tool's predictions"). Bad input (a missing folder, a
prediction without truth, a shape mismatch, probabilities instead of labels)
exits with status 2 and one line per problem. No Keras import.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from clotseg.cli import PROJECT_ROOT, run_main
from clotseg.errors import ClotSegError
from clotseg.settings import Settings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clotseg.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--pred", type=Path, required=True, help="folder of predictions (<case>_pred.npy, ...)")
    p.add_argument("--truth", type=Path, required=True, help="folder of truth masks")
    p.add_argument("--volumes", type=Path, default=None,
                   help="folder of the cases' volumes and sidecars (HU biomarkers, spacing, overlays)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <pred>_scores)")
    p.add_argument("--config", default=str(PROJECT_ROOT / "config.py"),
                   help="config module for MASK_PATTERN, MODALITY_PATTERNS, WINDOWS_HU, VOXEL_SPACING_MM "
                        "(default: the project's config.py; built-in defaults when it is missing)")
    p.add_argument("--preset", default=None, help="overlay PRESETS[NAME] from the config")
    p.add_argument("--truth-pattern", default=None,
                   help="truth file pattern with <ID>, e.g. 'CS<ID>_seg_corrected_binary.npy' (default: MASK_PATTERN)")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("ROW", "COL", "SLICE"),
                   help="voxel spacing in mm for cases without a sidecar or NIfTI header")
    p.add_argument("--num-classes", type=int, default=None,
                   help="1 for binary masks, K for labels 0..K-1 (default: NUM_CLASSES, or from the labels)")
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default: BOOTSTRAP_RESAMPLES)")
    p.add_argument("--no-report", action="store_true", help="metrics.csv and summary.json only, no figures/report")
    return p


def _settings(args) -> Settings:
    config = Path(args.config)
    if config.is_file():
        return Settings.from_file(config, preset=args.preset)
    if args.preset:
        raise ClotSegError(f"--preset {args.preset} needs a config file; {config} does not exist")
    return Settings()


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from clotseg.evaluation.report import markdown_table
    from clotseg.evaluation.scoring import score_folder

    settings = _settings(args)
    if args.spacing is not None and not all(math.isfinite(s) and s > 0 for s in args.spacing):
        raise ClotSegError(f"--spacing must be three positive numbers in mm, got {args.spacing}")
    if args.num_classes is not None and args.num_classes < 1:
        raise ClotSegError(f"--num-classes must be 1 or more, got {args.num_classes}")
    if args.resamples is not None and args.resamples < 1:
        raise ClotSegError(f"--resamples must be a positive integer, got {args.resamples}")
    pred = args.pred.resolve()
    out = (args.out or pred.parent / f"{pred.name}_scores").resolve()
    if out.exists() and not out.is_dir():
        raise ClotSegError(f"--out {out} is a file, not a folder")
    num_classes = args.num_classes or (settings.num_classes if settings.num_classes > 1 else None)
    spacing = tuple(args.spacing) if args.spacing is not None else settings.voxel_spacing_mm
    summary, cases = score_folder(
        pred, args.truth, out, args.volumes, mask_pattern=args.truth_pattern or settings.mask_pattern,
        modality_patterns=dict(settings.modality_patterns), windows=dict(settings.windows_hu),
        default_spacing=spacing, num_classes=num_classes,
        n_resamples=args.resamples or settings.bootstrap_resamples, seed=settings.random_seed,
        meta={"command": "python -m clotseg.evaluate"})
    print(f"scored {len(cases)} case(s): {out / 'metrics.csv'}, {out / 'summary.json'}")
    print(markdown_table(summary))
    rank = summary.get("uncertainty_ranking") or {}
    if rank.get("spearman_rho") is not None:
        print(f"Uncertainty score vs Dice: Spearman rho {rank['spearman_rho']:.2f} (n = {rank['n']})")
    if not args.no_report:
        from clotseg.evaluation.rendering import render_report

        report = render_report(out, cases, modalities=settings.modalities, windows=dict(settings.windows_hu),
                               display_windows=settings.display_windows_hu,
                               title=f"ClotSeg scores: {pred.name}",
                               target_name=str(getattr(settings, "target_name", None) or "clot"))
        print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
