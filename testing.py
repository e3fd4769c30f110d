"""ClotSeg testing: predict the Testing cohort with a trained run, score it and report.

    python testing.py                      # latest run (or TEST_RUN in config.py)
    python testing.py --run 20261122-101500
    python testing.py --run RUN_FOLD0 RUN_FOLD1 RUN_FOLD2 RUN_FOLD3   # an ensemble
    python testing.py --input-dir path/to/new_cases   # unlabeled: predictions only

Three steps with files between them: predict (predictions/, the only step
that loads Keras), score (metrics.csv, summary.json; the same code as
`python -m clotseg.evaluate`), render (figures, report.html). Writes
<run>/Testing/ (or <run>/Testing_<folder>/ for --input-dir); an ensemble
writes Trainings/Ensemble_<k>runs_<hash>/Testing/.
"""

from pathlib import Path

from clotseg.cli import base_parser, load_settings, run_main


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="+", default=None, metavar="RUN",
                        help="run folder name under Trainings/ (default: TEST_RUN or latest); several names "
                             "test their models as one ensemble (probabilities averaged)")
    parser.add_argument("--input-dir", type=Path, default=None,
                        help="predict every case in this folder instead of the run's Testing cohort")
    parser.add_argument("--mask-dir", type=Path, default=None,
                        help="masks for --input-dir cases (optional; without masks no metrics are computed)")
    parser.add_argument("--output", type=Path, default=None,
                        help="output folder (default: <run>/Testing, or <run>/Testing_<input folder> with --input-dir)")
    args = parser.parse_args()
    settings = load_settings(args)

    from clotseg.stages.evaluate import run_evaluation

    run_evaluation(settings, run_name=args.run, input_dir=args.input_dir, mask_dir=args.mask_dir, output=args.output)
    return 0


if __name__ == "__main__":
    run_main(main)
