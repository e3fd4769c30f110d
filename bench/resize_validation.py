"""Copies of finished quality runs whose Validation cohort has another size, to re-tune on.

    python -m bench.resize_validation SRC DST --cases N [--from BIGGER] [--seed S]

SRC is a `bench/quality.py --workdir` folder. For each repeat<i> with a
finished run, DST/repeat<i> gets that run (Trainings/<run>/, copied) and
its cohorts (training volumes and masks, test_<domain>/ folders: hard
links where the file system allows, else copies), and the run's
Relevant_Files/split.json lists N Validation cases instead of its own:

- fewer: a seeded draw from its own Validation cases;
- more: its own plus cases of BIGGER's repeat<i> (`--from`, a workdir of
  the same generator and seeds with more `--train-cases`: the phantom seeds
  each case by its number, so the larger cohort holds the smaller one's
  cases, checked on the truth) that SRC's split never names, so none was
  trained on.

Either way the clot cases and the controls keep their Validation shares
(rounded). The model, its training and the test cohorts stay the same;
then

    python -m bench.quality <SRC's arguments> --reuse --retune --workdir DST

chooses each run's post-processing again on the new Validation cohort and
scores it, and `python -m bench.cross_cohorts SRC DST` compares the two:
the size of the tuner's validation set alone (twenty-sixth round in
docs/quality-rounds.md). DST/repeat<i>/validation_resize.json records what
was done; a repeat already made with the same arguments is kept, any
other existing DST/repeat<i> is left alone with a one-line message (exit
status 2), as are a SRC without finished runs and too few cases to draw.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.quality import latest_run, log  # noqa: E402
from clotseg.errors import ClotSegError  # noqa: E402
from clotseg.io import atomic_write_json, load_npy, read_json  # noqa: E402
from clotseg.layout import RUN_SPLIT, VALIDATION  # noqa: E402

RECORD = "validation_resize.json"
VOLUMES, MASKS = Path("DL_vol_files/binary"), Path("DL_seg_files/binary")


class ResizeError(Exception):
    """A user's mistake in the arguments or the workdirs (one line, exit status 2)."""


def _natural(case: str) -> tuple:
    """CS2 before CS10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", case))


def case_files(folder: Path, case: str) -> list[Path]:
    """`case`'s files in a cohort folder: CS7_*.npy and its CS7.json sidecar (not CS70's)."""
    return sorted(p for p in folder.glob(f"{case}*") if p.name.startswith(f"{case}_") or p.name == f"{case}.json")


def _mask(project: Path, case: str) -> Path:
    found = [p for p in case_files(project / MASKS, case) if p.suffix == ".npy"]
    if len(found) != 1:
        raise ResizeError(f"{project / MASKS}: {len(found)} mask files for case {case}, expected 1")
    return found[0]


def clot_voxels(project: Path, case: str) -> int:
    """Voxels of `case`'s truth mask (0 for a control)."""
    return int((load_npy(_mask(project, case), what="mask") > 0).sum())


def choose(validation: list[str], target: int, has_clot, pool: list[str], rng: random.Random) -> list[str]:
    """`target` Validation cases keeping the clot / control shares (rounded).

    Fewer than now: drawn from `validation` (in its shuffled order). More:
    all of `validation` plus the first clot cases and controls of the
    shuffled `pool`. ResizeError when the pool (or the cohort) is short.
    """
    clot = [c for c in validation if has_clot(c)]
    want_clot = round(target * len(clot) / len(validation))
    want_free = target - want_clot
    if target <= len(validation):
        order = list(validation)
        rng.shuffle(order)
        kept_clot = [c for c in order if has_clot(c)][:want_clot]
        kept_free = [c for c in order if not has_clot(c)][:want_free]
        if len(kept_clot) + len(kept_free) != target:
            raise ResizeError(f"{len(validation)} Validation cases cannot give {want_clot} with clot and "
                              f"{want_free} without")
        return kept_clot + kept_free
    order = sorted(pool, key=_natural)
    rng.shuffle(order)
    extra_clot = [c for c in order if has_clot(c)][:max(want_clot - len(clot), 0)]
    extra_free = [c for c in order if not has_clot(c)][:max(want_free - (len(validation) - len(clot)), 0)]
    if len(validation) + len(extra_clot) + len(extra_free) != target:
        raise ResizeError(f"--from holds {len(pool)} cases outside the run's split, too few for {target} "
                          f"Validation cases ({want_clot} with clot, {want_free} without)")
    return list(validation) + extra_clot + extra_free


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:            # another file system (or no hard links): a copy
        shutil.copy2(src, dst)


def resize_repeat(project: Path, out: Path, target: int, bigger: Path | None, seed: int) -> dict:
    """Write `out` (a copy of quality repeat `project` with `target` Validation cases); returns its record."""
    repeat = int(project.name[len("repeat"):])
    run = latest_run(project)
    if not (run / RUN_SPLIT).is_file():
        raise ResizeError(f"{run}: no {RUN_SPLIT} (not a finished ClotSeg run)")
    split = read_json(run / RUN_SPLIT)
    cohorts = split.get("cohorts") if isinstance(split, dict) else None
    if not isinstance(cohorts, dict) or not cohorts.get(VALIDATION):
        raise ResizeError(f"{run / RUN_SPLIT}: no {VALIDATION} cases listed")
    named = {c for cases in cohorts.values() for c in cases}
    validation = list(cohorts[VALIDATION])
    params = {"source": str(project.resolve()), "run": run.name, "from": str(bigger.resolve()) if bigger else None,
              "cases": target, "seed": seed}
    if out.exists():
        old = read_json(out / RECORD) if (out / RECORD).is_file() else None
        if old is not None and {k: old.get(k) for k in params} == params:
            log(f"[resize] {out}: already made with these arguments, kept")
            return old
        raise ResizeError(f"{out}: exists and was not made from {project} with --cases {target}; not overwritten")
    if target > len(validation) and bigger is None:
        raise ResizeError(f"{project}: {len(validation)} Validation cases; --cases {target} needs --from BIGGER "
                          "(a workdir of the same generator with more --train-cases)")
    big = bigger / project.name if bigger else None
    if big is not None:
        if not (big / MASKS).is_dir():
            raise ResizeError(f"{big}: no {MASKS} folder (not a quality workdir's repeat)")
        # a case with clot: two generators' controls would all match at 0 voxels
        ordered = sorted(named, key=_natural)
        probe = next((c for c in ordered if clot_voxels(project, c) > 0), ordered[0])
        if not case_files(big / MASKS, probe) or clot_voxels(big, probe) != clot_voxels(project, probe):
            raise ResizeError(f"{big}: case {probe} differs from {project}'s (not the same generator and seed)")
    pool = sorted({p.name.split("_")[0] for p in (big / MASKS).glob("*.npy")} - named, key=_natural) if big else []
    holds = {}

    def has_clot(case):
        if case not in holds:
            holds[case] = clot_voxels(project if case in named else big, case) > 0
        return holds[case]

    chosen = choose(validation, target, has_clot, pool, random.Random(seed + repeat))
    # this process's own folder: a second call running at the same time, or a stopped call's
    # leftover, is never touched
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    if partial.exists():
        shutil.rmtree(partial)             # a stopped call of this same process id: ours
    partial.mkdir(parents=True)
    for item in sorted(project.iterdir()):
        if item.name in ("DL_vol_files", "DL_seg_files") or item.name.startswith("test_"):
            shutil.copytree(item, partial / item.name, copy_function=_link_or_copy)
    shutil.copytree(run, partial / "Trainings" / run.name)
    added = [c for c in chosen if c not in named]
    for case in added:
        for sub in (VOLUMES, MASKS):
            for f in case_files(big / sub, case):
                _link_or_copy(str(f), str(partial / sub / f.name))
    split["cohorts"][VALIDATION] = chosen
    split.setdefault("counts", {})[VALIDATION] = len(chosen)
    atomic_write_json(partial / "Trainings" / run.name / RUN_SPLIT, split)
    record = {**params, "validation_before": validation, "validation": chosen, "added": added,
              "dropped": [c for c in validation if c not in chosen],
              "with_clot": sum(has_clot(c) for c in chosen)}
    atomic_write_json(partial / RECORD, record)
    try:
        os.replace(partial, out)
    except OSError:                        # another call finished `out` first: keep its copy, drop ours
        shutil.rmtree(partial)
        if not out.exists():
            raise
        return resize_repeat(project, out, target, bigger, seed)
    log(f"[resize] {out}: {len(validation)} -> {len(chosen)} Validation cases "
        f"({record['with_clot']} with clot; {len(added)} added, {len(record['dropped'])} dropped)")
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="bench/quality.py --workdir with finished runs")
    parser.add_argument("dst", type=Path, help="new workdir for the copies")
    parser.add_argument("--cases", type=int, required=True, metavar="N", help="Validation cases wanted")
    parser.add_argument("--from", dest="bigger", type=Path, default=None, metavar="BIGGER",
                        help="a workdir of the same generator with more cases, to draw added Validation cases from")
    parser.add_argument("--seed", type=int, default=0, help="draws use seed + repeat")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.exit(2, f"bench.resize_validation: --cases must be at least 1, got {args.cases}\n")
    try:
        projects = [p for p in sorted(args.src.glob("repeat*")) if p.name[6:].isdigit() and latest_run(p)]
        if not projects:
            raise ResizeError(f"{args.src}: no repeat<i> with a finished run (bench/quality.py --workdir)")
        if args.src.resolve() == args.dst.resolve():
            raise ResizeError(f"{args.dst}: the same folder as SRC; give a new one")
        records = [resize_repeat(p, args.dst / p.name, args.cases, args.bigger, args.seed) for p in projects]
    except (ResizeError, FileNotFoundError, ClotSegError) as exc:
        parser.exit(2, f"bench.resize_validation: {exc}\n")
    print(json.dumps([{k: r[k] for k in ("source", "cases", "validation", "added", "dropped", "with_clot")}
                      for r in records], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
