"""ClotSeg training: split, slice, augment, then train the 2D U-Net.

    python training.py                 # settings from config.py
    python training.py --preset demo   # small CPU-friendly demo settings
    python training.py --resume        # continue the latest unfinished run

Stages are gated by PREPROCESS (raw scans only), TRAIN_TEST_SPLIT, SLICE_EXTRACT,
DATA_AUG, MODEL_TRAINING.
"""

from clotseg.cli import base_parser, load_settings, run_main


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true", help="resume the latest unfinished run (like RESUME = True)")
    parser.add_argument("--prepare-only", action="store_true", help="run the data stages only, no training")
    args = parser.parse_args()
    settings = load_settings(args)

    from clotseg.pipeline import prepare_data

    settings = prepare_data(settings)["settings"]   # with PREPROCESS: the settings that read the prepared cohort
    if args.prepare_only:
        print(f"[prepare] data ready in {settings.processed_path}; train with: python training.py")
        return 0
    if not settings.model_training:     # (as run_training says it, without starting Keras for nothing)
        print("[train] MODEL_TRAINING is False: skipping training")
        return 0
    from clotseg.quiet import load_backend

    load_backend()  # Keras and its backend start here, without their C++ start-up lines
    from clotseg.stages.train import run_training

    run_training(settings, resume=True if args.resume else None)
    return 0


if __name__ == "__main__":
    run_main(main)
