"""What averaging several trained models buys: the models of a quality workdir as one ensemble.

    python -m bench.ensemble WORKDIR [--domain first-build] [--member PROJECT ...] [--name NAME]
                             [--where hyperdense=false] [--out F.json]

WORKDIR is a `bench/quality.py --workdir` folder with two or more repeats,
each with a finished run and its unseen test cohort (as `bench/cross_cohorts.py`
reads them); its test cohorts are the ones scored. The members are its
repeats' models, or the runs of the `--member` project folders named
(`<workdir>/repeat<i>` of any workdir of the same scale and domain, e.g.
models trained with another `--set RANDOM_SEED`). Every member predicts
every test cohort j with the plain post-processing (0.5, no TTA, no filter)
and saves its probabilities, testing.py's code path, into
<member>/Ensemble_<domain>/cohort<j>/ (kept: a stopped call picks up where
it stopped). The members' probabilities of each case are then averaged
(float32 mean of the float16 maps testing.py saves), thresholded at 0.5
(`clotseg.inference.to_mask`) and scored with `clotseg.evaluate`'s
`score_folder` into WORKDIR/ensemble_<domain>[_<NAME>]/cohort<j>/.

Printed: per cohort the ensemble's clot-case Dice beside each member's, and
the paired difference ensemble - members (each test case's member Dice
averaged over the members, bootstrapped over the test cases, as
`bench/cross_cohorts.py` pairs two configurations), with clots found, FP
components per case and controls with an alarm. Both sides use the plain
post-processing, so the figure is what averaging does to the networks'
output, not to a tuner's choice. `--where KEY=VALUE` keeps the test cases
whose phantom sidecar has that value, as bench/compare.py does.

What it measures depends on the members: bench/quality.py's repeats are
trained on different training cohorts (seeds 1000 + r), so their ensemble has
seen more cases than any member; members trained on the same cohort (a
user's ensemble) are `repeat0` of workdirs made with `--first-repeat 0
--set RANDOM_SEED=N`, each N another split, initialisation and sample order.

Bad input (not a quality workdir, fewer than two members, a member folder
without a finished run, member predictions of different cases or shapes)
is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.compare import parse_where, read_metrics, where  # noqa: E402
from bench.cross_cohorts import CrossError, score_cohort, averaged, markdown_paired, paired, repeats  # noqa: E402
from bench.quality import latest_run, log, plain_postprocessing, slice_axis_of, slice_view  # noqa: E402
from clotseg.errors import ClotSegError  # noqa: E402


def member_folder(member: Path, cohort: int, domain: str) -> Path:
    """Member project `member`'s plain predictions (with probabilities) of test cohort `cohort`."""
    return Path(member) / f"Ensemble_{domain}" / f"cohort{cohort}"


def predict_missing(workdir: Path, members: list[Path], cohorts: list[int], domain: str, score=None) -> list[Path]:
    """Each member's plain scoring of each of WORKDIR's test cohorts with SAVE_PROBABILITIES, where
    no metrics.csv is there yet; returns the folders written. `score(settings, run, cohort_folder,
    output)` defaults to testing.py's code path."""
    from clotseg.layout import load_run_settings

    score = score or score_cohort
    written = []
    for project in members:
        todo = [j for j in cohorts if not (member_folder(project, j, domain) / "metrics.csv").is_file()]
        if not todo:
            continue
        run = latest_run(project)
        settings = plain_postprocessing(load_run_settings(run, project)).replace(save_probabilities=True)
        axis = slice_axis_of(project)
        for j in todo:
            out = member_folder(project, j, domain)
            log(f"[ensemble] {project} on cohort {j}")
            cohort = Path(workdir) / f"repeat{j}" / f"test_{domain}"
            if axis != 2:  # a model of other planes predicts a copy of the cohort in its order
                cohort = view_copy(cohort, out.parent / f"input_cohort{j}", axis)
            score(settings, run, cohort, out)
            written.append(out)
    return written


def view_copy(cohort: Path, target: Path, axis: int) -> Path:
    """A copy of test cohort folder `cohort` (volumes/, masks/) in `target`, its slices taken along
    `axis` (`bench.quality.slice_view`); files already there are kept."""
    import shutil

    for sub in ("volumes", "masks"):
        (target / sub).mkdir(parents=True, exist_ok=True)
        for f in sorted((cohort / sub).iterdir()):
            if f.is_file() and not (target / sub / f.name).exists():
                shutil.copy2(f, target / sub / f.name)
    slice_view(target / "volumes", target / "masks", axis)
    return target


def average_members(prob_files: list[Path], threshold: float = 0.5, axes: list[int] | None = None) -> np.ndarray:
    """uint8 (H, W, D) mask of the members' mean probability (float16 (H, W, D) `_prob.npy` maps);
    `axes[i]` != 2: member i predicted planes along that axis, so its map's last axis goes back there."""
    from clotseg.inference import mean_of, to_mask
    from clotseg.io import load_npy

    axes = axes or [2] * len(prob_files)
    maps = [np.moveaxis(load_npy(path), -1, a) for path, a in zip(prob_files, axes)]   # axis 2: unmoved
    for path, p in zip(prob_files[1:], maps[1:]):
        if p.shape != maps[0].shape:
            raise CrossError(f"{path}: shape {p.shape} differs from the other members' {maps[0].shape}")
    return to_mask(mean_of(maps)[..., None], threshold)


def ensemble_cohort(workdir: Path, members: list[Path], cohort: int, domain: str, out: Path) -> Path:
    """Average the members' probabilities of cohort `cohort` into out/predictions and score them
    into `out` (metrics.csv, summary.json; no report)."""
    from clotseg.evaluation.scoring import score_folder
    from clotseg.io import atomic_save_npy
    from clotseg.layout import load_run_settings

    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    axes = [slice_axis_of(m) for m in members]
    first = member_folder(members[0], cohort, domain) / "predictions"
    cases = sorted(p.name[:-len("_prob.npy")] for p in first.glob("*_prob.npy"))
    if not cases:
        raise CrossError(f"{first}: no _prob.npy files")
    for case in cases:
        files = [member_folder(m, cohort, domain) / "predictions" / f"{case}_prob.npy" for m in members]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CrossError(f"{missing[0]}: missing (member predictions of cohort {cohort} differ)")
        atomic_save_npy(pred_dir / f"{case}_pred.npy", average_members(files, axes=axes))
    settings = load_run_settings(latest_run(members[0]), members[0])
    test = Path(workdir) / f"repeat{cohort}" / f"test_{domain}"
    with contextlib.redirect_stdout(sys.stderr):
        score_folder(pred_dir, test / "masks", out, test / "volumes", mask_pattern=settings.mask_pattern,
                     modality_patterns=dict(settings.modality_patterns), windows=dict(settings.windows_hu),
                     default_spacing=settings.voxel_spacing_mm, n_resamples=1000, seed=0,
                     meta={"command": "python -m bench.ensemble", "members": [str(m) for m in members]},
                     log=lambda *a, **k: None)
    return out


def resolve_members(workdir: Path, cohorts: list[int], member_args: list[Path] | None) -> list[Path]:
    """The member project folders: WORKDIR's repeats, or the `--member` folders (each with a finished run)."""
    if not member_args:
        return [Path(workdir) / f"repeat{i}" for i in cohorts]
    members = []
    for m in member_args:
        if latest_run(m) is None:
            raise CrossError(f"{m}: no finished run (a bench/quality.py repeat<i> folder with Trainings/<run>)")
        if m.resolve() not in [x.resolve() for x in members]:
            members.append(m)
    if len(members) < 2:
        raise CrossError("--member: an ensemble needs at least two different members")
    return members


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path, help="bench/quality.py workdir whose test cohorts are scored")
    parser.add_argument("--domain", default="first-build", help="the test cohorts' domain (default: first-build)")
    parser.add_argument("--member", type=Path, action="append", default=None, metavar="PROJECT",
                        help="a member's repeat<i> folder (repeatable; default: WORKDIR's repeats)")
    parser.add_argument("--name", default=None,
                        help="the ensemble's folder is WORKDIR/ensemble_<domain>_<NAME> (needed with --member)")
    parser.add_argument("--where", default=None, metavar="KEY=VALUE",
                        help="only the cases whose sidecar has this value, e.g. hyperdense=false")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    where_kv = parse_where(parser, "bench.ensemble", args.where)

    def rows_of(folder: Path, cohort: int) -> dict:
        rows = read_metrics(folder)
        if where_kv is not None:
            rows = where(rows, args.workdir / f"repeat{cohort}" / f"test_{args.domain}" / "volumes", *where_kv)
        return rows

    try:
        if not args.workdir.is_dir():
            raise CrossError(f"{args.workdir}: no such folder")
        if args.member and not args.name:
            raise CrossError("--member needs --name (the ensemble's folder under WORKDIR)")
        cohorts = repeats(args.workdir, args.domain)
        members = resolve_members(args.workdir, cohorts, args.member)
        predict_missing(args.workdir, members, cohorts, args.domain)
        name = f"ensemble_{args.domain}" + (f"_{args.name}" if args.name else "")
        ens_table, member_table = {}, {}
        for j in cohorts:
            out = args.workdir / name / f"cohort{j}"
            log(f"[ensemble] cohort {j}: averaging {len(members)} members")
            ensemble_cohort(args.workdir, members, j, args.domain, out)
            ens_table[(0, j)] = rows_of(out, j)
            for i, m in enumerate(members):
                member_table[(i, j)] = rows_of(member_folder(m, j, args.domain), j)
        result = paired(averaged(member_table), averaged(ens_table))
    except (CrossError, FileNotFoundError, ClotSegError) as exc:
        parser.exit(2, f"bench.ensemble: {exc}\n")

    def clot_mean(rows):
        dice = [float(r["dice"]) for r in rows.values() if float(r["true_voxels"]) > 0]
        return sum(dice) / len(dice) if dice else float("nan")

    per_cohort = {j: {"ensemble": clot_mean(ens_table[(0, j)]),
                      "members": [clot_mean(member_table[(i, j)]) for i in range(len(members))]} for j in cohorts}
    report = {"workdir": str(args.workdir), "domain": args.domain, "where": args.where,
              "members": [str(m) for m in members],
              "cohorts": cohorts, "per_cohort": per_cohort, "paired": result}
    blob = json.dumps(report, indent=2, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(blob + "\n", encoding="utf-8")
    print(blob)
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    members, cohorts, result = report["members"], report["cohorts"], report["paired"]
    head = " | ".join(f"member {i}" for i in range(len(members)))
    subgroup = f", {report['where']}" if report.get("where") else ""
    lines = [f"#### plain post-processing: clot-case mean Dice per test cohort ({report['domain']}{subgroup})", "",
             "Members: " + ", ".join(f"{i} = {m}" for i, m in enumerate(members)), "",
             f"| cohort | {head} | ensemble |", "| --- |" + " --- |" * (len(members) + 1)]
    for j in cohorts:
        row = report["per_cohort"][j]
        lines.append(f"| {j} | " + " | ".join(f"{v:.3f}" for v in row["members"]) + f" | {row['ensemble']:.3f} |")
    lines += ["", markdown_paired(result, ("members", "ensemble"), (len(members), 1))]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
