"""Finding the cases of a cohort on disk and checking them before any work.

A case is `CS<ID>` with one volume per modality (MODALITY_PATTERNS) in
VOLUME_DIR and, for labelled cases, a mask (MASK_PATTERN) in MASK_DIR. File
names match case-insensitively. Every problem is reported with the case and
the file at fault, and all problems of the cohort are listed at once.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clotseg.errors import InputDataError
from clotseg.helpers import natural_key, pattern_regex  # noqa: F401  (one definition each; names kept here)
from clotseg.io import available_memory_bytes, file_signature, human_bytes, load_npy, special_file_problem
from clotseg.settings import Settings

# Integer HU outside this range means a wrapped-around (overflowed) type,
# e.g. -1000 HU saved as uint16 reads 64536.
_HU_PLAUSIBLE = (-2048.0, 16384.0)


@dataclass(frozen=True)
class Case:
    """One case: its id, modality volume paths (in channel order), mask path."""

    case_id: str
    volumes: dict = field(default_factory=dict)   # modality -> Path
    mask: Path | None = None
    sidecar: Path | None = None

    def signature(self) -> list:
        """Name/size/mtime of every file: changes when any file changes."""
        files = list(self.volumes.values()) + ([self.mask] if self.mask else [])
        return [self.case_id] + [file_signature(p) for p in files]

    def spacing_mm(self, default=None):
        """(row, col, slice) mm from the sidecar JSON, else `default`."""
        if self.sidecar is not None:
            sp = read_sidecar(self.sidecar, self.case_id).get("spacing_mm")
            if sp is not None:
                return tuple(float(v) for v in sp)
        return tuple(default) if default is not None else None

    def slice_gaps(self) -> list[int]:
        """Stack indices k whose next slice k + 1 is not adjacent in the
        source (the slice importer's sidecar "slice_gaps"); [] without."""
        if self.sidecar is None:
            return []
        return sorted(set(read_sidecar(self.sidecar, self.case_id).get("slice_gaps") or []))


def read_sidecar(path: Path, case_id: str = "") -> dict:
    """Read and check a per-case sidecar `<case>.json`; return its object.

    It must be a regular file holding a JSON object; `spacing_mm`, when
    present and not null, must be three finite positive numbers (row, col,
    slice mm). Raises InputDataError with a one-line message naming the file.
    """
    who = f"case {case_id}: " if case_id else ""
    problem = special_file_problem(path)
    if problem is not None:
        raise InputDataError(f"{who}sidecar {path} {problem}")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputDataError(f"{who}sidecar {path} is not UTF-8 text (JSON expected): {exc.reason}") from exc
    except json.JSONDecodeError as exc:
        raise InputDataError(f"{who}sidecar {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
                             f"column {exc.colno}") from exc
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{who}sidecar {path} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise InputDataError(f"{who}sidecar {path} must hold a JSON object like {{\"spacing_mm\": [0.5, 0.5, 1.0]}}, "
                             f"not a {type(data).__name__}")
    sp = data.get("spacing_mm")
    if sp is not None:
        ok = (isinstance(sp, list) and len(sp) == 3
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                      for v in sp))
        if not ok:
            raise InputDataError(f"{who}sidecar {path}: spacing_mm must be three finite positive numbers "
                                 f"[row, col, slice] in mm, got {json.dumps(sp)[:80]}")
    gaps = data.get("slice_gaps")
    if gaps is not None and not (isinstance(gaps, list) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in gaps)):
        raise InputDataError(f"{who}sidecar {path}: slice_gaps must be a list of slice indices (integers >= 0) "
                             f"after which the next slice is not adjacent, got {json.dumps(gaps)[:80]}")
    return data


def case_id_for(pattern: str, raw_id: str) -> str:
    """Canonical case id: the pattern's prefix + the id, e.g. 'CS' + '12'."""
    return pattern.split("<ID>")[0].rstrip("_-") + raw_id


def _scan(folder: Path, patterns: dict, problems: list | None = None) -> tuple[dict, list]:
    """{case_id: {key: path}} for files in `folder` matching `patterns`.

    A name that matches but is not a readable regular file (broken or
    looping symbolic link, folder, device, FIFO) is added to `problems`
    with what it is, instead of being skipped as if it were missing.
    """
    found: dict = {}
    unmatched = []
    if not folder.is_dir():
        return found, unmatched
    regexes = {key: pattern_regex(p) for key, p in patterns.items()}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        for key, rx in regexes.items():
            m = rx.match(path.name)
            if m:
                cid = case_id_for(patterns[key], m.group("id"))
                problem = special_file_problem(path)
                if problem is not None:
                    if problems is None:
                        break
                    problems.append(f"case {cid}: {path} {problem}")
                    found.setdefault(cid, {}).setdefault(f"\0bad {key}", path)
                    break
                slot = found.setdefault(cid, {})
                if key in slot:
                    raise InputDataError(
                        f"case {cid}: two files match the {key} pattern: {slot[key].name} and {path.name}")
                slot[key] = path
                break
        else:
            if path.suffix.lower() == ".npy" and path.is_file():
                unmatched.append(path)
    return found, unmatched


def _check_input_folder(folder: Path, setting: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise InputDataError(f"{setting} {folder} is a file, not a folder; set {setting} in config.py to the "
                             "folder that holds the files")
    if not folder.exists() and os.path.lexists(folder):
        raise InputDataError(f"{setting} {folder} {special_file_problem(folder)}")


def _sidecars(folder: Path) -> dict:
    """{lower-case case id: path} of the *.json files in `folder` (names case-insensitive)."""
    out: dict = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() == ".json" and not path.name.startswith("."):
                out.setdefault(path.stem.lower(), []).append(path)
    return out


def discover_cases(settings: Settings, require_masks: bool = True, warn=print) -> list[Case]:
    """List the cases in VOLUME_DIR/MASK_DIR, sorted by case id.

    Args:
        require_masks: True for training cohorts (every case needs a mask);
            False for prediction on unlabeled cases (masks used when present).
    Raises:
        InputDataError for an empty cohort, a case missing a modality, or a
        mask without volumes (all such problems listed together).
    """
    vol_dir, mask_dir = settings.volume_path, settings.mask_path
    _check_input_folder(vol_dir, "VOLUME_DIR")
    _check_input_folder(mask_dir, "MASK_DIR")
    problems = []
    vols, unmatched = _scan(vol_dir, settings.modality_patterns, problems)
    masks, unmatched_masks = _scan(mask_dir, {"mask": settings.mask_pattern}, problems)
    bad = {cid for cid, slot in list(vols.items()) + list(masks.items()) if any(k.startswith("\0") for k in slot)}
    vols = {cid: {k: v for k, v in slot.items() if not k.startswith("\0")} for cid, slot in vols.items()}
    masks = {cid: {k: v for k, v in slot.items() if not k.startswith("\0")} for cid, slot in masks.items()}
    for p in unmatched + unmatched_masks:
        warn(f"warning: ignoring {p} (its name matches no pattern in MODALITY_PATTERNS / MASK_PATTERN)")
    if not vols and not masks and not problems:
        raise InputDataError(
            f"no cases found: {vol_dir} has no files named like {list(settings.modality_patterns.values())}. "
            "Put your volumes there, run `python -m clotseg.phantom` for a synthetic cohort, "
            "or use `python training.py --preset demo`.")
    cases = []
    sidecars = _sidecars(vol_dir)
    for cid in sorted(set(vols) | set(masks), key=natural_key):
        if cid in bad:
            continue        # already reported with what the file is
        have = vols.get(cid, {})
        missing = [m for m in settings.modalities if m not in have]
        mask = masks.get(cid, {}).get("mask")
        if missing and have:
            problems.append(f"case {cid}: missing partner file(s) for {missing} in {vol_dir} "
                            f"(expected e.g. {settings.modality_patterns[missing[0]].replace('<ID>', cid[len(settings.case_prefix):])}; "
                            f"found {[p.name for p in have.values()]})")
            continue
        if not have:
            problems.append(f"case {cid}: mask {mask} has no volumes in {vol_dir} (orphan mask)")
            continue
        if mask is None and require_masks:
            problems.append(f"case {cid}: no mask in {mask_dir} (expected a file named like "
                            f"{settings.mask_pattern.replace('<ID>', cid[len(settings.case_prefix):])})")
            continue
        side = sidecars.get(cid.lower(), [])
        if len(side) > 1:
            problems.append(f"case {cid}: two sidecar files {side[0].name} and {side[1].name}; keep one")
            continue
        cases.append(Case(cid, {m: have[m] for m in settings.modalities}, mask, side[0] if side else None))
    if problems:
        raise InputDataError(listing("cohort problems", problems))
    return cases


def listing(title: str, problems: list[str]) -> str:
    """'N title:' followed by one indented line per problem."""
    return f"{len(problems)} {title}:\n" + "\n".join(f"  - {p}" for p in problems)


def check_case(case: Case, settings: Settings) -> tuple[int, int, int]:
    """Check one case's files; return its (H, W, D) shape.

    Checks: 3D arrays of one shape, numeric dtype, finite values, no integer
    overflow, plausible HU range for windowed modalities, binary (0/1 or
    0/255) or in-range class mask that does not cover the whole volume, and an
    in-plane size not above INPUT_SHAPE. Raises InputDataError naming the case
    and file.
    """
    shape = None
    in_h, in_w = settings.input_shape[:2]
    if case.sidecar is not None:
        read_sidecar(case.sidecar, case.case_id)
    check_memory(case)
    for modality, path in case.volumes.items():
        what = f"case {case.case_id} {modality}"
        arr = load_volume(path, what)
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise InputDataError(f"case {case.case_id}: shape mismatch, {path.name} is {arr.shape} but "
                                 f"{next(iter(case.volumes.values())).name} is {shape}")
        data = np.asarray(arr)
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            n_bad = int((~np.isfinite(data)).sum())
            raise InputDataError(f"{what} file {path.name} has {n_bad} NaN/inf voxel(s)")
        if data.size == 0:
            raise InputDataError(f"{what} file {path.name} is empty {data.shape}")
        lo, hi = float(data.min()), float(data.max())
        window = settings.windows_hu.get(modality)
        if window is not None and (lo < _HU_PLAUSIBLE[0] or hi > _HU_PLAUSIBLE[1]):
            raise InputDataError(
                f"{what} file {path.name} has values {lo:g}..{hi:g}, outside any CT range in HU "
                f"({_HU_PLAUSIBLE[0]:g}..{_HU_PLAUSIBLE[1]:g}); an integer overflow "
                f"(e.g. negative HU saved as {data.dtype}) is likely")
        if window is None and (lo < -1e-3 or hi > 1 + 1e-3):
            raise InputDataError(f"{what} file {path.name} has values {lo:g}..{hi:g} but WINDOWS_HU[{modality!r}] "
                                 "is None, which means the volume must already be in [0, 1]")
    if shape[0] > in_h or shape[1] > in_w:
        raise InputDataError(f"case {case.case_id}: slices are {shape[0]}x{shape[1]} pixels, larger than the model "
                             f"input INPUT_SHAPE {in_h}x{in_w}; raise INPUT_SHAPE or resize/crop the volumes "
                             "(e.g. `python -m clotseg.importers ... --resize`)")
    if case.mask is not None:
        check_mask(case, settings, shape)
    return tuple(int(s) for s in shape)


def case_memory_bytes(case: Case) -> int:
    """Estimated peak memory to check and slice one case, from the .npy
    headers only: every file loaded as stored, plus two float32 working
    copies of one volume (windowing, padding)."""
    total, voxels = 0, 0
    for modality, path in list(case.volumes.items()) + ([("mask", case.mask)] if case.mask is not None else []):
        arr = load_npy(path, mmap=True, what=f"case {case.case_id} {modality}")   # header only
        total += int(arr.nbytes)
        voxels = max(voxels, int(arr.size))
        del arr
    return total + 8 * voxels


def check_memory(case: Case, available: int | None = None) -> None:
    """Refuse a case whose estimated memory need exceeds the memory available
    now (InputDataError naming the case, the files and both figures)."""
    available = available_memory_bytes() if available is None else available
    if available is None:
        return
    need = case_memory_bytes(case)
    if need > available:
        files = ", ".join(p.name for p in case.volumes.values())
        raise InputDataError(f"case {case.case_id} is too large for the memory available: loading it ({files}"
                             f"{', ' + case.mask.name if case.mask is not None else ''}) needs about "
                             f"{human_bytes(need)}, {human_bytes(available)} available; crop or split the "
                             "volumes, or run on a machine with more memory")


def check_mask(case: Case, settings: Settings, shape) -> None:
    what = f"case {case.case_id} mask"
    m = load_npy(case.mask, mmap=True, what=what)
    if m.ndim != 3:
        raise InputDataError(f"{what} file {case.mask.name} has {m.ndim} dimensions {m.shape}; expected 3D (H, W, D)")
    if m.shape != tuple(shape):
        raise InputDataError(f"case {case.case_id}: shape mismatch, mask {case.mask.name} is {m.shape} "
                             f"but the volumes are {tuple(shape)}")
    if m.dtype.kind not in "iufb":
        raise InputDataError(f"{what} file {case.mask.name} has dtype {m.dtype}; expected integers 0/1")
    data = np.asarray(m)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise InputDataError(f"{what} file {case.mask.name} has NaN/inf values")
    values = np.unique(data)
    k = settings.num_classes
    allowed = set(range(max(k, 2))) if k > 1 else {0, 1}
    ok = set(values.tolist()) <= allowed or (k == 1 and set(values.tolist()) <= {0, 255})
    if not ok:
        shown = values[:10].tolist()
        raise InputDataError(f"{what} file {case.mask.name} is not a {'binary' if k == 1 else f'{k}-class'} mask: "
                             f"values {shown}{' ...' if values.size > 10 else ''} (expected 0/1 or 0/255)")
    if data.size > 1 and values.size == 1 and values[0] != 0:
        raise InputDataError(f"{what} file {case.mask.name} marks every voxel as clot (all {values[0]}); "
                             "the mask is probably inverted or mis-saved")


def cohort_problems(cases: list[Case], settings: Settings, progress: bool = True) -> tuple[dict, list]:
    """Check every case; return ({case_id: (H, W, D)} of the good ones, [problem, ...])."""
    shapes, problems = {}, []
    for case in tqdm(cases, desc="Checking cases", unit="case", disable=not progress, leave=False):
        try:
            shapes[case.case_id] = check_case(case, settings)
        except InputDataError as exc:
            problems.append(str(exc))
    return shapes, problems


def check_cohort(cases: list[Case], settings: Settings, progress: bool = True) -> dict:
    """Check every case; return {case_id: (H, W, D)}. Lists all bad cases at once."""
    shapes, problems = cohort_problems(cases, settings, progress)
    if problems:
        raise InputDataError(listing("input problem(s); nothing was written", problems))
    return shapes


def sidecar_problems(cases: list[Case]) -> list[str]:
    """Problems of the cases' sidecar JSON files (cheap; run on every start)."""
    problems = []
    for case in cases:
        if case.sidecar is not None:
            try:
                read_sidecar(case.sidecar, case.case_id)
            except InputDataError as exc:
                problems.append(str(exc))
    return problems


def load_case(case: Case) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Read a checked case: ([one (H, W, D) HU volume per modality], mask or None)."""
    vols = [load_npy(p, what=f"case {case.case_id} {m}") for m, p in case.volumes.items()]
    mask = load_npy(case.mask, what=f"case {case.case_id} mask") if case.mask is not None else None
    return vols, mask


def load_volume(path: Path, what: str) -> np.ndarray:
    """Memory-map one modality's volume and check it is a numeric 3D array
    (H, W, D); InputDataError names `what` ("case CS1 CTA") and the file."""
    arr = load_npy(path, mmap=True, what=what)
    if arr.ndim != 3:
        raise InputDataError(f"{what} file {path.name} has {arr.ndim} dimensions {arr.shape}; "
                             "expected a 3D volume (H, W, D) with slices along the last axis")
    if arr.dtype.kind not in "iuf":
        raise InputDataError(f"{what} file {path.name} has dtype {arr.dtype}; expected a numeric array")
    return arr
