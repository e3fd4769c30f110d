"""2D slice importer: folders of PNG/JPG/TIFF/.npy slices grouped into cases.

Each file's path relative to its folder (e.g. '049/brain/12.jpg' or
'7_12.png') is searched with a regex that has a named group `case` and
optionally `slice`; files of one case are stacked along the last axis in
slice order (numbers compared as numbers; without a `slice` group, natural
order of the file names). Grouping by case keeps every slice of a patient on
the same side of the later case-level split.

Images are read unchanged (8/16-bit values kept, colour converted to one grey
channel); they are not HU, so the sidecar says "intensity": "raw" and the
window in config.py must fit the value range (e.g. (0, 255) for 8-bit).
Masks are binarised by a threshold, taken as labels when they only hold 0/1
(or class ids 0..MAX_CLASSES with `multiclass`), or mapped colour -> class by an rgb_map.
Pixel spacing is unknown (sidecar spacing_mm null).

With a numeric `slice` group the sidecar records the source slice numbers
("slice_numbers") and where consecutive stacked slices are not adjacent in
the source ("slice_gaps": stack index k where slice k+1 does not follow
slice k, e.g. 3, 4, 7 -> [1]); 2.5D context never takes a slice across
such a gap as a neighbour (training and testing pad each run of adjacent
slices on its own), and the scoring never joins 3D components or surface
distances across it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np

from clotseg.errors import InputDataError
from clotseg.importers.common import (MAX_CLASSES, CaseSource, ImportOptions, ImportReport, LoadedCase,
                                      natural_key, run_import)
from clotseg.io import load_npy

DEFAULT_REGEX = r"(?P<case>\d+)_(?P<slice>\d+)"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy"}


# ------------------------------------------------------------------ reading
def _read_raw(path: Path, what: str) -> np.ndarray:
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = load_npy(path, what=what)
    else:
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise InputDataError(f"{what} file {path} cannot be read as an image (corrupt or unsupported format)")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (2, 3, 4)) or 0 in arr.shape:
        raise InputDataError(f"{what} file {path} has shape {arr.shape}; expected a 2D image (H, W) or (H, W, 3)")
    return arr


def _to_gray(arr: np.ndarray, is_npy: bool) -> np.ndarray:
    """(H, W) grey values from a 1- to 4-channel image."""
    if arr.ndim == 2:
        return arr
    if arr.shape[2] == 2:          # grey + alpha
        return arr[:, :, 0]
    if arr.dtype not in (np.uint8, np.uint16, np.float32):
        arr = arr.astype(np.float32)
    rgb = arr[:, :, :3]
    # cv2 reads colour as BGR; .npy arrays are assumed RGB
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY if is_npy else cv2.COLOR_BGR2GRAY)


def read_slice_image(path: Path | str) -> np.ndarray:
    """One image slice -> float32 (H, W) raw values (colour -> grey)."""
    path = Path(path)
    arr = _read_raw(path, "image")
    gray = _to_gray(arr, path.suffix.lower() == ".npy")
    out = gray.astype(np.float32)
    if not np.isfinite(out).all():
        raise InputDataError(f"image file {path} has NaN/inf values")
    return out


def parse_rgb_map(text_or_dict) -> dict:
    """'{"(255,0,0)": 1, "(0,255,0)": 2}' (RGB order) -> {(255, 0, 0): 1, (0, 255, 0): 2}.

    Keys may also be written '255,0,0' or '[255, 0, 0]'. Black maps to 0
    unless listed. Raises InputDataError for malformed entries.
    """
    if isinstance(text_or_dict, str):
        try:
            raw = json.loads(text_or_dict)
        except json.JSONDecodeError as exc:
            raise InputDataError(f"--rgb-map is not valid JSON: {exc}; write it like "
                                 "'{\"(255,0,0)\": 1, \"(0,255,0)\": 2}'") from exc
    else:
        raw = text_or_dict
    if not isinstance(raw, dict) or not raw:
        raise InputDataError("--rgb-map must be a non-empty JSON object {\"(R,G,B)\": class}")
    out = {}
    for key, value in raw.items():
        parts = re.findall(r"-?\d+", str(key)) if not isinstance(key, tuple) else list(key)
        colour = tuple(int(p) for p in parts)
        if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
            raise InputDataError(f"--rgb-map key {key!r} is not an (R,G,B) colour with values 0..255")
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
            raise InputDataError(f"--rgb-map value for {key!r} must be a class id 0..255, got {value!r}")
        out[colour] = value
    out.setdefault((0, 0, 0), 0)
    return out


def read_slice_mask(path: Path | str, threshold: float = 127, rgb_map: dict | None = None,
                    rgb_tolerance: int = 0, multiclass: bool = False) -> np.ndarray:
    """One mask slice -> uint8 (H, W) labels.

    With `rgb_map` ({(R, G, B): class}), every pixel's colour must be within
    `rgb_tolerance` (per channel) of a listed colour (the nearest one wins;
    lossy JPEG masks need a tolerance). Otherwise: a mask holding only 0 and 1
    (or, with `multiclass`, only small class ids) is taken as labels as they
    are; anything else is grey-converted and set to 1 where > threshold.
    Raises InputDataError naming the file for unmapped colours.
    """
    path = Path(path)
    is_npy = path.suffix.lower() == ".npy"
    arr = _read_raw(path, "mask")
    if rgb_map:
        if arr.ndim == 2:
            rgb = np.repeat(arr[:, :, None], 3, axis=2)
        elif arr.shape[2] == 2:
            rgb = np.repeat(arr[:, :, :1], 3, axis=2)
        else:
            rgb = arr[:, :, :3] if is_npy else arr[:, :, 2::-1]
        if rgb.dtype != np.uint8:
            raise InputDataError(f"mask file {path}: an rgb_map needs an 8-bit colour mask, got {rgb.dtype}")
        colours = np.array(list(rgb_map), dtype=np.int16)                # (K, 3)
        classes = np.array(list(rgb_map.values()), dtype=np.uint8)
        flat = rgb.reshape(-1, 3).astype(np.int16)
        uniq, inverse = np.unique(flat, axis=0, return_inverse=True)
        dist = np.abs(uniq[:, None, :] - colours[None, :, :]).max(axis=2)  # (U, K) Chebyshev distance
        nearest = dist.argmin(axis=1)
        bad = dist[np.arange(len(uniq)), nearest] > rgb_tolerance
        if bad.any():
            counts = np.bincount(inverse.ravel(), minlength=len(uniq))
            shown = [f"{tuple(int(v) for v in uniq[i])} x{int(counts[i])}" for i in np.flatnonzero(bad)[:5]]
            raise InputDataError(f"mask file {path} has colour(s) not in --rgb-map: {', '.join(shown)}"
                                 f"{' ...' if bad.sum() > 5 else ''} (RGB order; add them to the map or pass "
                                 "--rgb-tolerance for lossy JPEG masks)")
        return classes[nearest][inverse.ravel()].reshape(rgb.shape[:2])
    gray = _to_gray(arr, is_npy)
    values = set(np.unique(gray).tolist())
    if values <= {0, 1}:
        return gray.astype(np.uint8)
    if multiclass and all(float(v).is_integer() and 0 <= v <= MAX_CLASSES for v in values):
        return gray.astype(np.uint8)
    return (gray > threshold).astype(np.uint8)


# ----------------------------------------------------------------- grouping
def _compile(regex: str, what: str) -> re.Pattern:
    try:
        rx = re.compile(regex)
    except re.error as exc:
        raise InputDataError(f"{what} {regex!r} is not a valid regular expression: {exc}") from exc
    if "case" not in rx.groupindex:
        raise InputDataError(f"{what} {regex!r} needs a named group (?P<case>...)")
    return rx


def _slice_sort_key(key: str):
    return natural_key(key)


def group_slice_files(folder: Path, regex: str, exclude: set | None = None) -> tuple[dict, list]:
    """Files under `folder` grouped by the regex.

    Returns ({case: {slice key: path}}, unmatched paths). The slice key is
    the `slice` group when the regex has one, else the relative path without
    extension (so masks pair with images of the same name). Raises
    InputDataError for two files with the same case and slice, and for files
    whose `case` group matches an empty text (never skipped silently).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(f"slice folder {folder} does not exist")
    rx = _compile(regex, "--regex")
    has_slice = "slice" in rx.groupindex
    groups: dict = {}
    unmatched, empty = [], []
    for path in sorted(folder.rglob("*"), key=lambda p: natural_key(p.as_posix())):
        rel = path.relative_to(folder)
        if (not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES
                or any(part.startswith(".") for part in rel.parts)):
            continue
        if exclude and path.resolve() in exclude:
            continue
        m = rx.search(rel.as_posix())
        if not m or m.group("case") is None:
            unmatched.append(path)
            continue
        if not m.group("case").strip():
            empty.append(path)
            continue
        key = m.group("slice") if has_slice and m.group("slice") is not None else rel.with_suffix("").as_posix()
        if has_slice and key.isdigit():
            key = str(int(key))     # '012' and '12' are the same slice
        slot = groups.setdefault(m.group("case"), {})
        if key in slot:
            raise InputDataError(f"case {m.group('case')}: {slot[key]} and {path} are both slice {key!r}; "
                                 "make --regex tell them apart or remove one")
        slot[key] = path
    if empty:
        raise InputDataError(f"{len(empty)} file(s) in {folder} give an empty case name with {regex!r}, e.g. "
                             f"{empty[0]}; make the (?P<case>...) group match at least one character, or rename "
                             "or remove these files")
    return groups, unmatched


def _unmatched(paths: list, folder, flag: str, regex: str, log, ignore: bool) -> None:
    shown = ", ".join(str(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
    if ignore:
        log(f"note: {len(paths)} file(s) in {folder} do not match {flag} {regex!r} and are ignored "
            f"(--ignore-unmatched), e.g. {shown}")
        return
    raise InputDataError(f"{len(paths)} file(s) in {folder} do not match {flag} {regex!r}: {shown}; "
                         "fix the regex, or pass --ignore-unmatched to leave them out")


def slice_gaps(numbers: list | None) -> list[int]:
    """Stack indices k whose next slice is not the next number in the source
    ([] when all are adjacent or the numbers are unknown)."""
    if not numbers:
        return []
    return [k for k in range(len(numbers) - 1) if numbers[k + 1] - numbers[k] != 1]


def describe_cases(cases: list[CaseSource], modalities: list, limit: int = 50) -> str:
    """'found 3 case(s): 3 (3 slices, labelled), 12 (2 slices), ...' for the log."""
    parts = []
    for case in cases[:limit]:
        n = len(case.files.get(modalities[0]) or [])
        label = ", labelled" if case.files.get("mask") is not None else ", unlabelled"
        parts.append(f"{case.name} ({n} slice{'s' if n != 1 else ''}{label})")
    more = f" ... and {len(cases) - limit} more" if len(cases) > limit else ""
    return f"found {len(cases)} case(s): " + ", ".join(parts) + more


def discover_slice_cases(images: dict, masks: Path | None, regex: str = DEFAULT_REGEX,
                         mask_regex: str | None = None, fill_missing_masks: bool = False,
                         log=print, ignore_unmatched: bool = False) -> list[CaseSource]:
    """Group image (and mask) files into cases.

    Args:
        images: {modality: folder}; all modalities must have the same slices.
        masks: mask folder or None (unlabelled). It may be an image folder
            too (masks told apart by `mask_regex`).
        fill_missing_masks: slices without a mask file get an empty mask
            (datasets such as Cranium only store masks of positive slices);
            without it a partly masked case is refused, a case without any
            mask file is imported unlabelled.
        ignore_unmatched: image files (or files of a separate mask folder)
            that the regex does not match are skipped with a note; without
            it they stop the import (InputDataError listing them).
    CaseSource.files = {modality: [paths in slice order], 'mask': [path or None]}.
    """
    if not images:
        raise InputDataError("no image folder given")
    mask_groups, mask_files, mask_unmatched = {}, set(), []
    if masks is not None:
        mask_groups, mask_unmatched = group_slice_files(Path(masks), mask_regex or regex)
        mask_files = {p.resolve() for slot in mask_groups.values() for p in slot.values()}
    per_modality = {}
    image_files = set()
    for modality, folder in images.items():
        groups, unmatched = group_slice_files(Path(folder), regex, exclude=mask_files)
        image_files |= {p.resolve() for slot in groups.values() for p in slot.values()}
        if unmatched:
            _unmatched(unmatched, folder, "--regex", regex, log, ignore_unmatched)
        if not groups:
            same = masks is not None and Path(masks).resolve() == Path(folder).resolve()
            hint = " (images and masks share the folder: give --mask-regex so masks are told apart)" if same else ""
            raise InputDataError(f"no image file in {folder} matches --regex {regex!r}{hint}")
        per_modality[modality] = groups
    # a mask folder of its own: its files must all be masks (in a shared folder the images do not match)
    image_dirs = {Path(f).resolve() for f in images.values()}
    if masks is not None and Path(masks).resolve() not in image_dirs:
        stray = [p for p in mask_unmatched if p.resolve() not in image_files]
        if stray:
            _unmatched(stray, masks, "--mask-regex" if mask_regex else "--regex", mask_regex or regex, log,
                       ignore_unmatched)
    modalities = list(images)
    ref = per_modality[modalities[0]]
    names = sorted(set().union(*[set(g) for g in per_modality.values()]), key=natural_key)
    cases = []
    for name in names:
        issues = []
        keys = sorted(ref.get(name, {}), key=_slice_sort_key)
        for modality in modalities[1:]:
            other = set(per_modality[modality].get(name, {}))
            if other != set(keys):
                diff = sorted(other ^ set(keys), key=_slice_sort_key)[:5]
                issues.append(f"modalities {modalities[0]} and {modality} have different slices (e.g. {diff})")
        files = {m: [per_modality[m].get(name, {}).get(k) for k in keys] for m in modalities}
        case_masks = mask_groups.get(name, {})
        if case_masks or (masks is not None and fill_missing_masks):
            files["mask"] = [case_masks.get(k) for k in keys]
            missing = [files[modalities[0]][i] for i, p in enumerate(files["mask"]) if p is None]
            if missing and not fill_missing_masks:
                issues.append(f"{len(missing)} slice(s) have no mask file, e.g. {missing[0]} "
                              "(pass --fill-missing-masks if absent masks mean 'no lesion')")
            orphans = sorted(set(case_masks) - set(keys), key=_slice_sort_key)
            if orphans:
                issues.append(f"mask file(s) without an image slice: {[str(case_masks[k]) for k in orphans[:5]]}")
        else:
            files["mask"] = None
        numbers = ([int(k) for k in keys] if "slice" in _compile(regex, "--regex").groupindex
                   and all(str(k).isdigit() for k in keys) else None)
        cases.append(CaseSource(name, files, "; ".join(issues) or None, slice_numbers=numbers))
    orphan_cases = sorted(set(mask_groups) - set(names), key=natural_key)
    if orphan_cases:
        log(f"warning: masks of case(s) {orphan_cases[:10]} have no images and are ignored")
    return cases


def load_slice_case(files: dict, modalities: list, threshold: float = 127, rgb_map: dict | None = None,
                    rgb_tolerance: int = 0, multiclass: bool = False, what: str = "case") -> LoadedCase:
    """Read and stack a case's slices: volumes float32 (H, W, D) raw values, mask uint8 (H, W, D) or None."""
    volumes = {}
    ref_shape, ref_file = None, None
    for modality in modalities:
        slices = []
        for path in files[modality]:
            img = read_slice_image(path)
            if ref_shape is None:
                ref_shape, ref_file = img.shape, path
            elif img.shape != ref_shape:
                raise InputDataError(f"{what}: slice {path} is {img.shape[0]}x{img.shape[1]} but {ref_file} is "
                                     f"{ref_shape[0]}x{ref_shape[1]}; all slices of a case must have one size")
            slices.append(img)
        volumes[modality] = np.stack(slices, axis=-1)
    mask = None
    if files.get("mask") is not None:
        layers = []
        for path in files["mask"]:
            if path is None:
                layers.append(np.zeros(ref_shape, dtype=np.uint8))
                continue
            m = read_slice_mask(path, threshold, rgb_map, rgb_tolerance, multiclass)
            if m.shape != ref_shape:
                raise InputDataError(f"{what}: mask {path} is {m.shape[0]}x{m.shape[1]} but its image slices are "
                                     f"{ref_shape[0]}x{ref_shape[1]} ({ref_file})")
            layers.append(m)
        mask = np.stack(layers, axis=-1).astype(np.uint8)
        if not multiclass and mask.max(initial=0) > 1:
            raise InputDataError(f"{what}: masks hold class ids up to {int(mask.max())}; pass --multiclass")
    sources = {m: [str(Path(p).resolve()) for p in files[m]] for m in modalities}
    sources["mask"] = None if files.get("mask") is None else [
        None if p is None else str(Path(p).resolve()) for p in files["mask"]]
    return LoadedCase(volumes, mask, None, None, sources, affine=None, intensity="raw")


def import_slices(images: dict | Path | str, options: ImportOptions, masks: Path | str | None = None,
                  regex: str = DEFAULT_REGEX, mask_regex: str | None = None, mask_threshold: float = 127,
                  rgb_map: dict | str | None = None, rgb_tolerance: int = 0, fill_missing_masks: bool = False,
                  modality_name: str = "NCCT", ignore_unmatched: bool = False) -> ImportReport:
    """Import 2D slice folders into the CT-ClotSeg layout (one volume per case).

    Args:
        images: image folder (one modality named `modality_name`) or
            {modality: folder} for several modalities with the same slices.
        masks: mask folder (optional). mask_regex: regex for mask files
            (default: `regex`).
        mask_threshold: grey value above which a mask pixel is 1.
        rgb_map: {(R, G, B): class} or its JSON text; colour masks -> classes.
            Class ids above 1 turn on multiclass masks.
        rgb_tolerance: largest per-channel colour difference still mapped.
        fill_missing_masks: missing mask slices mean 'no lesion'.
        ignore_unmatched: skip (with a note) files the regex does not match
            instead of stopping.
    The cases found and their slice counts are logged before anything is
    written. Returns the ImportReport; raises InputDataError naming the bad
    files.
    """
    if not isinstance(images, dict):
        images = {modality_name: Path(images)}
    images = {m: Path(p) for m, p in images.items()}
    cmap = parse_rgb_map(rgb_map) if rgb_map else None
    multiclass = options.multiclass or (cmap is not None and max(cmap.values()) > 1)
    cases = discover_slice_cases(images, None if masks is None else Path(masks), regex, mask_regex,
                                 fill_missing_masks, log=options.log, ignore_unmatched=ignore_unmatched)
    modalities = list(images)
    options.log(describe_cases(cases, modalities))

    gapped = [(c.name, len(slice_gaps(c.slice_numbers))) for c in cases if slice_gaps(c.slice_numbers)]
    if gapped:
        options.log(f"note: {len(gapped)} case(s) have gaps in their slice numbers (e.g. {gapped[0][0]}: "
                    f"{gapped[0][1]} gap(s)); recorded in the sidecar as slice_gaps: 2.5D context (CONTEXT_SLICES) "
                    "never takes a slice across them as a neighbour, and the scoring never joins 3D components "
                    "or surface distances across them")

    def loader(src: CaseSource) -> LoadedCase:
        case = load_slice_case(src.files, modalities, mask_threshold, cmap, rgb_tolerance, multiclass,
                               f"case {src.name}")
        if src.slice_numbers is not None:
            case.extra = {**(case.extra or {}), "slice_numbers": list(src.slice_numbers),
                          "slice_gaps": slice_gaps(src.slice_numbers)}
        return case

    return run_import("slices", cases, loader, modalities, options)
