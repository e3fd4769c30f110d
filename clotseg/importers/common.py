"""What every importer shares: output layout, case ids, checks and the writer.

An importer turns its source format into `LoadedCase`s (volumes float32
(H, W, D), mask uint8 (H, W, D) or None, spacing in mm) and hands them to
`run_import`, which maps the user's case names to `CS<n>` ids, checks the
arrays, optionally resizes them in-plane, and writes the CT-ClotSeg layout:

    <volume_dir>/CS<n>_CTA_Binary.npy ...   one float32 volume per modality
    <mask_dir>/CS<n>_seg_corrected_binary.npy   uint8 mask (labelled cases)
    <volume_dir>/CS<n>.json                 sidecar: spacing, orientation, sources
    <volume_dir>/import_map.json            {source case name: "CS<n>"}

Existing files are never replaced by different content unless `overwrite`;
identical files are left alone, so re-running an import is safe.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from clotseg.errors import InputDataError
from clotseg.helpers import jsonable as _jsonable
from clotseg.helpers import natural_key  # noqa: F401  (imported from here by the importers)
from clotseg.io import atomic_save_npy, atomic_write_json, load_npy, read_json

IMPORT_MAP = "import_map.json"
MAX_CLASSES = 32          # "small non-negative integers": above this a mask is likely a probability/intensity map
_KNOWN_SUFFIXES = {"CTA": "_CTA_Binary.npy", "NCCT": "_NCCT_Reg_Binary.npy"}


# ----------------------------------------------------------------- options
@dataclass
class ImportOptions:
    """Where and how an import writes.

    Attributes:
        out_root: project root; `volume_dir`/`mask_dir` are relative to it.
        volume_dir, mask_dir: output folders (config VOLUME_DIR / MASK_DIR).
        case_prefix: case ids are `<prefix><n>` (config CASE_PREFIX).
        output_patterns: {modality: file pattern with <ID>}; modalities not
            listed get `<prefix><ID>_CTA_Binary.npy` / `_NCCT_Reg_Binary.npy`
            for CTA / NCCT and `<prefix><ID>_<MODALITY>.npy` otherwise.
        mask_pattern: mask file pattern with <ID>.
        max_size: largest allowed in-plane size (pixels) or None (no limit).
        resize: downsample larger inputs to `max_size` instead of refusing.
        overwrite: replace existing files whose content differs.
        dry_run: read and check everything, write nothing.
        skip_bad_cases: report a bad case and go on instead of stopping.
        multiclass: masks may hold small class ids 0..MAX_CLASSES, not only 0/1.
        unregistered: raw scans for the PREPROCESS stage: the modalities of a
            case may lie on different grids (a CTA and a raw NCCT); each keeps
            its own, recorded in the sidecar ("affines", "modality_spacing_mm",
            "modality_shapes"); the mask must lie on the first modality's
            grid; no in-plane size limit (the stage crops).
        log: function printing progress lines.
    """

    out_root: Path = Path(".")
    volume_dir: str = "DL_vol_files/binary"
    mask_dir: str = "DL_seg_files/binary"
    case_prefix: str = "CS"
    output_patterns: dict = field(default_factory=dict)
    mask_pattern: str | None = None
    max_size: int | None = None
    resize: bool = False
    overwrite: bool = False
    dry_run: bool = False
    skip_bad_cases: bool = False
    multiclass: bool = False
    unregistered: bool = False
    log: Callable = print

    @classmethod
    def from_settings(cls, settings, **overrides) -> "ImportOptions":
        """Options whose folders and file patterns follow a `Settings` (config.py)."""
        values = dict(out_root=settings.root, volume_dir=settings.volume_dir, mask_dir=settings.mask_dir,
                      case_prefix=settings.case_prefix, output_patterns=dict(settings.modality_patterns),
                      mask_pattern=settings.mask_pattern, multiclass=settings.num_classes > 1)
        values.update(overrides)
        return cls(**values)

    @property
    def volume_path(self) -> Path:
        return (Path(self.out_root) / self.volume_dir).resolve()

    @property
    def mask_path(self) -> Path:
        return (Path(self.out_root) / self.mask_dir).resolve()

    def pattern_for(self, modality: str) -> str:
        """Output file pattern (with <ID>) of one modality."""
        if modality in self.output_patterns:
            return self.output_patterns[modality]
        return self.case_prefix + "<ID>" + _KNOWN_SUFFIXES.get(modality, f"_{modality}.npy")

    def mask_pattern_or_default(self) -> str:
        return self.mask_pattern or f"{self.case_prefix}<ID>_seg_corrected_binary.npy"

    def check_patterns(self, modalities: list[str]) -> None:
        """Raise InputDataError unless every output pattern is usable.

        A pattern must be a file name with one <ID>, end in .npy and start
        with the case prefix, so that ClotSeg's cohort scan derives the same
        case id (`CS12`) from the file name as the sidecar `CS12.json` uses.
        """
        if not re.fullmatch(r"[A-Za-z0-9]*", self.case_prefix):
            raise InputDataError(f"case prefix {self.case_prefix!r} must be letters/digits")
        pats = {m: self.pattern_for(m) for m in modalities}
        pats["mask"] = self.mask_pattern_or_default()
        for name, pat in pats.items():
            ok = (pat.count("<ID>") == 1 and pat.lower().endswith(".npy") and "/" not in pat and "\\" not in pat
                  and pat.split("<ID>")[0].rstrip("_-") == self.case_prefix)
            if not ok:
                raise InputDataError(f"output pattern for {name} {pat!r} must be a file name "
                                     f"'{self.case_prefix}<ID>....npy' (one <ID>, starting with the case prefix "
                                     f"{self.case_prefix!r}, ending in .npy)")
        lowered = [p.lower() for p in pats.values()]
        if len(set(lowered)) != len(lowered):
            raise InputDataError(f"output patterns must all differ, got {pats}")


# ------------------------------------------------------------------- cases
@dataclass
class CaseSource:
    """One case as found in the source: the user's name and its input files.

    `files` is for messages ({"CTA": path, "mask": path or None, ...});
    `problem` is set when discovery already knows the case is unusable.
    """

    name: str
    files: dict = field(default_factory=dict)
    problem: str | None = None
    slice_numbers: list | None = None   # source slice numbers in stack order (slice importer), if known


@dataclass
class LoadedCase:
    """A case read into memory, before the common checks.

    Attributes:
        volumes: {modality: float32 (H, W, D)} in HU (or raw image values).
        mask: uint8 (H, W, D) labels, or None for an unlabelled case.
        spacing_mm: [row_mm, col_mm, slice_mm] or None when unknown.
        orientation: axis codes such as "RAS" (where each array axis points)
            or None when unknown.
        source_files: JSON-able description of the input files.
        affine: 4x4 voxel -> RAS mm matrix (NIfTI convention) or None.
        intensity: "HU" or "raw".
        extra: more JSON-able facts for the sidecar.
    """

    volumes: dict
    mask: np.ndarray | None
    spacing_mm: list | None
    orientation: str | None
    source_files: dict
    affine: np.ndarray | None = None
    intensity: str = "HU"
    extra: dict = field(default_factory=dict)


@dataclass
class ImportReport:
    """What an import did: {source name: case id}, and per-case outcome."""

    case_ids: dict = field(default_factory=dict)
    written: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)     # source name -> message
    shapes: dict = field(default_factory=dict)     # case id -> (H, W, D)


def parse_assignments(items, what: str) -> dict:
    """['CTA=cta', 'NCCT=ncct'] -> {'CTA': 'cta', 'NCCT': 'ncct'} (order kept)."""
    out = {}
    for item in items or []:
        name, sep, value = str(item).partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise InputDataError(f"{what} must look like NAME=VALUE, got {item!r}")
        if name in out:
            raise InputDataError(f"{what} names {name!r} twice")
        out[name] = value
    return out


# --------------------------------------------------------------- case ids
def _numeric_id(name: str, prefix: str) -> int | None:
    m = re.fullmatch(rf"(?:{re.escape(prefix)})?(\d+)", name, flags=re.IGNORECASE) if prefix else \
        re.fullmatch(r"(\d+)", name)
    return int(m.group(1)) if m else None


def _id_number(case_id: str, prefix: str) -> int | None:
    m = re.fullmatch(rf"{re.escape(prefix)}(\d+)", str(case_id))
    return int(m.group(1)) if m else None


def assign_case_ids(names: list[str], prefix: str = "CS", existing: dict | None = None) -> dict:
    """Map source case names to case ids `<prefix><n>`.

    Names already in `existing` (an earlier import_map.json) keep their id.
    If every name is a number (or `<prefix><number>`, e.g. '049', 'CS12'),
    the number is kept ('049' -> CS49); otherwise new names, in natural sort
    order, take the lowest numbers not used yet (1, 2, ... for a fresh
    import). Raises InputDataError when two names would share one id.
    """
    existing = dict(existing or {})
    used = {}
    for src, cid in existing.items():
        num = _id_number(cid, prefix)
        if num is not None:
            used[num] = src
    mapping = {}
    new = sorted((n for n in set(names) if n not in existing), key=natural_key)
    numeric = all(_numeric_id(n, prefix) is not None for n in names)
    if numeric:
        clashes = []
        for name in new:
            num = _numeric_id(name, prefix)
            if num in used and used[num] != name:
                clashes.append(f"{name!r} and {used[num]!r} both become {prefix}{num}")
            used[num] = name
        if clashes:
            raise InputDataError("case names clash after keeping their numbers: " + "; ".join(clashes)
                                 + f" (see {IMPORT_MAP} for earlier imports)")
        mapping.update({n: f"{prefix}{_numeric_id(n, prefix)}" for n in new})
    else:
        num = 1
        for name in new:
            while num in used:
                num += 1
            used[num] = name
            mapping[name] = f"{prefix}{num}"
    for name in names:
        if name in existing:
            mapping[name] = existing[name]
    return {n: mapping[n] for n in sorted(set(names), key=natural_key)}


def read_import_map(volume_path: Path) -> dict:
    """The {source name: case id} of earlier imports into this folder ({} if none)."""
    path = Path(volume_path) / IMPORT_MAP
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except (OSError, json.JSONDecodeError) as exc:
        raise InputDataError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise InputDataError(f"{path} must map source case names to case ids, e.g. {{\"patient7\": \"CS1\"}}")
    return data


def raw_geometry(volumes: dict, affines: dict, spacings: dict) -> dict:
    """The sidecar fields of a case whose modalities keep their own grids
    (--unregistered): {"affines": {modality: 4x4 voxel -> RAS mm},
    "modality_spacing_mm": {...}, "modality_shapes": {...}, "registered": False}."""
    r6 = lambda v: [round(float(x), 6) for x in v]  # noqa: E731
    return {"affines": {m: [r6(row) for row in np.asarray(affines[m])] for m in volumes},
            "modality_spacing_mm": {m: None if spacings.get(m) is None else r6(spacings[m]) for m in volumes},
            "modality_shapes": {m: list(v.shape) for m, v in volumes.items()},
            "registered": False}


# ------------------------------------------------------------------ checks
def mask_to_labels(arr: np.ndarray, multiclass: bool, what: str) -> np.ndarray:
    """Turn a mask read as numbers into uint8 labels.

    Accepts {0, 1}, {0, 255} (-> {0, 1}) or, with `multiclass`, integers
    0..MAX_CLASSES. Values must be integers up to 1e-3 (float files).
    Raises InputDataError naming `what` (the file) otherwise.
    """
    data = np.asarray(arr)
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    if data.dtype.kind not in "iuf":
        raise InputDataError(f"{what}: mask has dtype {data.dtype}; expected numbers")
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise InputDataError(f"{what}: mask has NaN/inf values")
        rounded = np.rint(data)
        if data.size and float(np.abs(data - rounded).max()) > 1e-3:
            raise InputDataError(f"{what}: mask holds non-integer values (a probability map?); "
                                 "threshold it into labels before importing")
        data = rounded
    values = np.unique(data)
    vals = set(values.tolist())
    if vals <= {0, 1}:
        return data.astype(np.uint8)
    if vals <= {0, 255}:
        return (data == 255).astype(np.uint8)
    shown = values[:10].tolist()
    more = " ..." if values.size > 10 else ""
    if not multiclass:
        raise InputDataError(f"{what}: mask is not binary, values {shown}{more}; expected 0/1 or 0/255 "
                             "(use --multiclass for class-id masks)")
    if values.min() < 0 or values.max() > MAX_CLASSES:
        raise InputDataError(f"{what}: multiclass mask values {shown}{more} must be integers 0..{MAX_CLASSES}")
    return data.astype(np.uint8)


def describe_sources(files: dict) -> str:
    """Short 'CTA a.nii.gz, mask b.nii.gz' text for messages."""
    parts = []
    for key, value in files.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            shown = [str(v) for v in value if v is not None]
            if not shown:
                continue
            value = shown[0] + (f" (+{len(shown) - 1} more)" if len(shown) > 1 else "")
        parts.append(f"{key} {value}")
    return ", ".join(parts)


def check_loaded(case: LoadedCase, what: str, same_grid: bool = True) -> tuple[int, int, int]:
    """Check shapes, dtypes and values of a loaded case; return (H, W, D)
    of the first modality.

    Volumes must be finite 3D arrays of one shape (any shapes without
    `same_grid`: raw scans); the mask (if any) uint8 of the first modality's
    shape. Raises InputDataError naming the case's files.
    """
    if not case.volumes:
        raise InputDataError(f"{what}: no image volumes")
    shape = None
    first = None
    for modality, vol in case.volumes.items():
        src = case.source_files.get(modality)
        if vol.ndim != 3 or 0 in vol.shape:
            raise InputDataError(f"{what}: {modality} ({describe_sources({modality: src})}) has shape {vol.shape}; "
                                 "expected a non-empty 3D volume")
        if not np.isfinite(vol).all():
            raise InputDataError(f"{what}: {modality} ({describe_sources({modality: src})}) has "
                                 f"{int((~np.isfinite(vol)).sum())} NaN/inf voxel(s)")
        if shape is None:
            shape, first = vol.shape, modality
        elif vol.shape != shape and same_grid:
            raise InputDataError(f"{what}: {modality} is {vol.shape} but {first} is {shape} "
                                 f"({describe_sources(case.source_files)}); modalities must share one voxel grid")
    if case.mask is not None:
        if case.mask.shape != shape:
            raise InputDataError(f"{what}: mask is {case.mask.shape} but the volumes are {shape} "
                                 f"({describe_sources(case.source_files)})")
        if case.mask.dtype != np.uint8:
            raise InputDataError(f"{what}: internal error, mask dtype {case.mask.dtype} is not uint8")
    return tuple(int(s) for s in shape)


def _resize_stack(arr: np.ndarray, size_hw: tuple[int, int], interpolation: int) -> np.ndarray:
    """Resize every slice of (H, W, D) to size_hw = (h, w); keeps dtype."""
    h, w = size_hw
    out = np.empty((h, w, arr.shape[2]), dtype=arr.dtype)
    for k in range(arr.shape[2]):
        out[:, :, k] = cv2.resize(np.ascontiguousarray(arr[:, :, k]), (w, h), interpolation=interpolation)
    return out


def fit_in_plane(case: LoadedCase, max_size: int | None, resize: bool, what: str) -> LoadedCase:
    """Enforce the in-plane size limit: refuse, or downsample keeping the aspect ratio.

    Images are resized with cv2.INTER_AREA (an average over the covered
    pixels, no aliasing), masks with exact nearest neighbour (labels stay
    labels); spacing_mm and the affine follow the new pixel size. Slices
    within the limit are returned unchanged. Raises InputDataError naming the
    case's files when too large and `resize` is False.
    """
    if max_size is None:
        return case
    h, w, _ = next(iter(case.volumes.values())).shape
    if max(h, w) <= max_size:
        return case
    if not resize:
        raise InputDataError(f"{what}: slices are {h}x{w} pixels, larger than --max-size {max_size} "
                             f"({describe_sources(case.source_files)}); pass --resize to downsample at import "
                             "or raise --max-size")
    scale = max_size / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    fh, fw = h / nh, w / nw      # old pixels per new pixel along rows / cols
    volumes = {m: _resize_stack(v, (nh, nw), cv2.INTER_AREA) for m, v in case.volumes.items()}
    mask = None if case.mask is None else _resize_stack(case.mask, (nh, nw), cv2.INTER_NEAREST_EXACT)
    spacing = None
    if case.spacing_mm is not None:
        spacing = [case.spacing_mm[0] * fh, case.spacing_mm[1] * fw, case.spacing_mm[2]]
    affine = None
    if case.affine is not None:
        affine = np.array(case.affine, dtype=np.float64)
        old = affine.copy()
        affine[:3, 0] = old[:3, 0] * fh
        affine[:3, 1] = old[:3, 1] * fw
        # the centre of new pixel 0 lies half a new pixel minus half an old one from the old centre
        affine[:3, 3] = old[:3, 3] + old[:3, 0] * (fh - 1) / 2 + old[:3, 1] * (fw - 1) / 2
    extra = dict(case.extra, resized_from=[h, w])
    return LoadedCase(volumes, mask, spacing, case.orientation, case.source_files, affine, case.intensity, extra)


# ------------------------------------------------------------------ writer
def _same_npy(path: Path, arr: np.ndarray) -> bool:
    try:
        old = load_npy(path, mmap=True)
    except InputDataError:
        return False
    return old.shape == arr.shape and old.dtype == arr.dtype and bool(np.array_equal(old, arr, equal_nan=True))


def _same_json(path: Path, obj) -> bool:
    try:
        return read_json(path) == json.loads(json.dumps(obj, sort_keys=True))
    except (OSError, json.JSONDecodeError):
        return False


def build_sidecar(case_id: str, source_name: str, importer: str, case: LoadedCase, shape) -> dict:
    """The per-case JSON sidecar written as `<volume_dir>/<case_id>.json`."""
    side = {
        "case_id": case_id,
        "source_case": source_name,
        "importer": importer,
        "spacing_mm": None if case.spacing_mm is None else [round(float(s), 6) for s in case.spacing_mm],
        "orientation": case.orientation,
        "source_files": case.source_files,
        "shape": list(shape),
        "modalities": list(case.volumes),
        "intensity": case.intensity,
        "labelled": case.mask is not None,
    }
    if case.affine is not None:
        side["affine_ras"] = [[round(float(v), 6) for v in row] for row in np.asarray(case.affine)]
    side.update(case.extra)
    return _jsonable(side)


def write_case(case_id: str, source_name: str, importer: str, case: LoadedCase, options: ImportOptions) -> str:
    """Write one checked case; return 'written', 'unchanged' or 'checked' (dry run).

    All target files are compared before any is written: if one exists with
    different content and not `options.overwrite`, InputDataError names it
    and nothing of the case is written. A stale mask of an id that is now
    unlabelled counts as different (removed with `overwrite`).
    """
    number = case_id[len(options.case_prefix):]
    vol_dir, mask_dir = options.volume_path, options.mask_path
    shape = next(iter(case.volumes.values())).shape
    targets = [(vol_dir / options.pattern_for(m).replace("<ID>", number), v.astype(np.float32, copy=False))
               for m, v in case.volumes.items()]
    mask_path = mask_dir / options.mask_pattern_or_default().replace("<ID>", number)
    if case.mask is not None:
        targets.append((mask_path, case.mask.astype(np.uint8, copy=False)))
    sidecar_path = vol_dir / f"{case_id}.json"
    sidecar = build_sidecar(case_id, source_name, importer, case, shape)

    pending, conflicts = [], []
    for path, arr in targets:
        if path.exists():
            if _same_npy(path, arr):
                continue
            conflicts.append(path)
        pending.append((path, arr))
    stale_mask = case.mask is None and mask_path.exists()
    if stale_mask:
        conflicts.append(mask_path)
    sidecar_changed = not (sidecar_path.exists() and _same_json(sidecar_path, sidecar))
    if sidecar_changed and sidecar_path.exists():
        conflicts.append(sidecar_path)
    if conflicts and not options.overwrite:
        raise InputDataError(f"{case_id} ({source_name}): existing file(s) differ from the import: "
                             + ", ".join(str(p) for p in conflicts)
                             + "; pass --overwrite to replace them (or import into another folder)")
    if not pending and not stale_mask and not sidecar_changed:
        return "unchanged"
    if options.dry_run:
        return "checked"
    for path, arr in pending:
        atomic_save_npy(path, arr)
    if stale_mask:
        mask_path.unlink()
    atomic_write_json(sidecar_path, sidecar)   # last: its presence means the case is complete
    return "written"


def run_import(importer: str, sources: list[CaseSource], loader: Callable[[CaseSource], LoadedCase],
               modalities: list[str], options: ImportOptions) -> ImportReport:
    """Import every case: map ids, load, check, fit in-plane size, write.

    Args:
        importer: "nifti", "dicom" or "slices" (recorded in the sidecars).
        sources: the cases found in the source, in any order.
        loader: reads one CaseSource into a LoadedCase (raises InputDataError).
        modalities: the modality names every case has, in channel order.
    Returns an ImportReport. Raises InputDataError at the first bad case
    (cases before it stay written; re-running skips identical files), or,
    with `options.skip_bad_cases`, records it in `report.failed` and goes on.
    `import_map.json` is updated after each case is written, so it only ever
    names cases whose files exist (a run whose first case fails leaves none).
    """
    options.check_patterns(modalities)
    if options.unregistered and options.resize:
        raise InputDataError("--resize and --unregistered do not go together: raw scans keep their grids, the "
                             "PREPROCESS stage resamples and crops them")
    if not sources:
        raise InputDataError("no cases found in the source")
    names = [s.name for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputDataError(f"case name(s) found more than once: {dupes}")
    known_problems = [f"case {s.name}: {s.problem}" for s in sources if s.problem]
    if known_problems and not options.skip_bad_cases:
        raise InputDataError(f"{len(known_problems)} case problem(s); nothing was written "
                             "(fix them or pass --skip-bad-cases):\n" + "\n".join(f"  - {p}" for p in known_problems))
    vol_dir = options.volume_path
    existing = read_import_map(vol_dir)
    ids = assign_case_ids(names, options.case_prefix, existing)
    report = ImportReport(case_ids=ids)
    if not options.dry_run:
        vol_dir.mkdir(parents=True, exist_ok=True)
        options.mask_path.mkdir(parents=True, exist_ok=True)
    recorded = dict(existing)     # import_map.json: only cases whose files are on disk
    ordered = sorted(sources, key=lambda s: natural_key(s.name))
    for i, src in enumerate(ordered, 1):
        cid = ids[src.name]
        what = f"case {src.name} ({cid})"
        try:
            if src.problem:
                raise InputDataError(f"{what}: {src.problem}")
            case = loader(src)
            same = not options.unregistered
            check_loaded(case, what, same)
            if same:      # raw scans keep their size: the PREPROCESS stage crops them
                case = fit_in_plane(case, options.max_size, options.resize, what)
            shape = check_loaded(case, what, same)
            status = write_case(cid, src.name, importer, case, options)
        except InputDataError as exc:
            if not options.skip_bad_cases:
                done = len(report.written) + len(report.unchanged)
                note = (f"\n({done} case(s) before it were imported; re-running after the fix skips identical files)"
                        if done and not options.dry_run else "")
                raise InputDataError(f"{exc}{note}") from exc
            report.failed[src.name] = str(exc)
            options.log(f"[{i}/{len(ordered)}] {src.name} -> {cid}: SKIPPED: {exc}")
            continue
        report.shapes[cid] = shape
        (report.unchanged if status == "unchanged" else report.written).append(cid)
        if not options.dry_run and recorded.get(src.name) != cid:
            recorded[src.name] = cid
            atomic_write_json(vol_dir / IMPORT_MAP, recorded)
        sp = "unknown spacing" if case.spacing_mm is None else "x".join(f"{s:.3g}" for s in case.spacing_mm) + " mm"
        label = "labelled" if case.mask is not None else "unlabelled"
        options.log(f"[{i}/{len(ordered)}] {src.name} -> {cid}: {status} "
                    f"({'x'.join(map(str, shape))}, {sp}, {label})")
    return report
