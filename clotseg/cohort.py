"""Finding the cases of a cohort on disk and checking them before any work.

A case is `CS<ID>` with one volume per modality (MODALITY_PATTERNS) in
VOLUME_DIR and, for labelled cases, a mask (MASK_PATTERN) in MASK_DIR. File
names match case-insensitively. Every problem is reported with the case and
the file at fault, and all problems of the cohort are listed at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clotseg.errors import InputDataError
from clotseg.io import file_signature, load_npy
from clotseg.settings import Settings

# Integer HU outside this range means a wrapped-around (overflowed) type,
# e.g. -1000 HU saved as uint16 reads 64536.
_HU_PLAUSIBLE = (-2048.0, 16384.0)
_ID = r"(?P<id>[A-Za-z0-9-]+)"


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
        if self.sidecar is not None and self.sidecar.is_file():
            try:
                sp = json.loads(self.sidecar.read_text()).get("spacing_mm")
            except (OSError, json.JSONDecodeError) as exc:
                raise InputDataError(f"case {self.case_id}: sidecar {self.sidecar} is not valid JSON: {exc}") from exc
            if sp is not None:
                if not (isinstance(sp, list) and len(sp) == 3 and all(isinstance(v, (int, float)) and v > 0 for v in sp)):
                    raise InputDataError(f"case {self.case_id}: sidecar {self.sidecar} spacing_mm must be 3 positive numbers")
                return tuple(float(v) for v in sp)
        return tuple(default) if default is not None else None


def pattern_regex(pattern: str) -> re.Pattern:
    """'CS<ID>_CTA_Binary.npy' -> case-insensitive regex with group 'id'."""
    before, after = pattern.split("<ID>")
    return re.compile("^" + re.escape(before) + _ID + re.escape(after) + "$", re.IGNORECASE)


def case_id_for(pattern: str, raw_id: str) -> str:
    """Canonical case id: the pattern's prefix + the id, e.g. 'CS' + '12'."""
    return pattern.split("<ID>")[0].rstrip("_-") + raw_id


def _scan(folder: Path, patterns: dict) -> tuple[dict, list]:
    """{case_id: {key: path}} for files in `folder` matching `patterns`."""
    found: dict = {}
    unmatched = []
    if not folder.is_dir():
        return found, unmatched
    regexes = {key: pattern_regex(p) for key, p in patterns.items()}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        for key, rx in regexes.items():
            m = rx.match(path.name)
            if m:
                cid = case_id_for(patterns[key], m.group("id"))
                slot = found.setdefault(cid, {})
                if key in slot:
                    raise InputDataError(
                        f"case {cid}: two files match the {key} pattern: {slot[key].name} and {path.name}")
                slot[key] = path
                break
        else:
            if path.suffix.lower() == ".npy":
                unmatched.append(path)
    return found, unmatched


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
    vols, unmatched = _scan(vol_dir, settings.modality_patterns)
    masks, unmatched_masks = _scan(mask_dir, {"mask": settings.mask_pattern})
    for p in unmatched + unmatched_masks:
        warn(f"warning: ignoring {p} (its name matches no pattern in MODALITY_PATTERNS / MASK_PATTERN)")
    if not vols and not masks:
        raise InputDataError(
            f"no cases found: {vol_dir} has no files named like {list(settings.modality_patterns.values())}. "
            "Put your volumes there, run `python -m clotseg.phantom` for a synthetic cohort, "
            "or use `python training.py --preset demo`.")
    problems = []
    cases = []
    for cid in sorted(set(vols) | set(masks), key=natural_key):
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
        sidecar = vol_dir / f"{cid}.json"
        cases.append(Case(cid, {m: have[m] for m in settings.modalities}, mask, sidecar if sidecar.is_file() else None))
    if problems:
        raise InputDataError(_listing("cohort problems", problems))
    return cases


def natural_key(case_id: str):
    """Sort key: CS2 before CS10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", case_id)]


def _listing(title: str, problems: list[str]) -> str:
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
    for modality, path in case.volumes.items():
        what = f"case {case.case_id} {modality}"
        arr = load_npy(path, mmap=True, what=what)
        if arr.ndim != 3:
            raise InputDataError(f"{what} file {path.name} has {arr.ndim} dimensions {arr.shape}; "
                                 "expected a 3D volume (H, W, D) with slices along the last axis")
        if arr.dtype.kind not in "iuf":
            raise InputDataError(f"{what} file {path.name} has dtype {arr.dtype}; expected a numeric array")
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


def check_cohort(cases: list[Case], settings: Settings, progress: bool = True) -> dict:
    """Check every case; return {case_id: (H, W, D)}. Lists all bad cases at once."""
    shapes, problems = {}, []
    for case in tqdm(cases, desc="Checking cases", unit="case", disable=not progress, leave=False):
        try:
            shapes[case.case_id] = check_case(case, settings)
        except InputDataError as exc:
            problems.append(str(exc))
    if problems:
        raise InputDataError(_listing("input problem(s); nothing was written", problems))
    return shapes


def load_case(case: Case) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Read a checked case: ([one (H, W, D) HU volume per modality], mask or None)."""
    vols = [load_npy(p, what=f"case {case.case_id} {m}") for m, p in case.volumes.items()]
    mask = load_npy(case.mask, what=f"case {case.case_id} mask") if case.mask is not None else None
    return vols, mask
