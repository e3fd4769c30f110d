"""Command line: `python -m clotseg.importers {nifti,dicom,slices} ...`.

Problems in the data or the arguments end the run with a message naming the
files at fault and exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from clotseg.errors import ClotSegError, InputDataError
from clotseg.importers.common import IMPORT_MAP, ImportOptions, parse_assignments

_EPILOG_NIFTI = """examples:
  python -m clotseg.importers nifti /data/cohort \\
      --modality CTA='{case}_cta.nii.gz' --modality NCCT='{case}_ncct_reg.nii.gz' --mask '{case}_seg.nii.gz'
  python -m clotseg.importers nifti HemSeg200/images --modality NCCT='{case}.nii.gz' \\
      --mask '{case}.nii.gz' --mask-root HemSeg200/labels --config config.py
"""
_EPILOG_DICOM = """examples:
  python -m clotseg.importers dicom /data/dicom --modality CTA=cta --modality NCCT=ncct_reg \\
      --mask '{case}/seg.nii.gz'
  python -m clotseg.importers dicom rsna_series --modality NCCT=. --series-list selected.txt \\
      --mask '{case}.nii.gz' --mask-root HemSeg200/labels
"""
_EPILOG_SLICES = """examples:
  python -m clotseg.importers slices pngs/images --masks pngs/masks                # files like 12_3.png
  python -m clotseg.importers slices Patients_CT --masks Patients_CT \\
      --regex '(?P<case>\\d+)/brain/(?P<slice>\\d+)\\.jpg' \\
      --mask-regex '(?P<case>\\d+)/brain/(?P<slice>\\d+)_HGE_Seg\\.jpg' --fill-missing-masks
  python -m clotseg.importers slices train/images --masks train/masks --regex '(?P<case>[^/]+)\\.png' \\
      --modality-name XRAY --max-size 256 --resize
"""


_UNREGISTERED_HELP = ("raw scans for the PREPROCESS stage (e.g. a CTA and a raw NCCT): the modalities may lie on "
                      "different grids; each keeps its own (recorded in the sidecar) and the stage registers them "
                      "onto the CTA; the mask must lie on the first modality's grid; no size limit")


def _wrap(text: str) -> str:
    """Wrap a description by hand: the raw formatter (kept for the examples) does not."""
    return textwrap.fill(text, width=79)


def _common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    out = p.add_argument_group("output (defaults: CT-ClotSeg layout, or the values of --config)")
    out.add_argument("--config", type=Path, help="take folders, file patterns, CASE_PREFIX, NUM_CLASSES and the "
                     "size limit (INPUT_SHAPE) from this config.py (paths relative to its folder), and print the "
                     "config.py lines that fit the imported data")
    out.add_argument("--out-root", type=Path, help="project folder the output folders are relative to "
                     "(default: the config's folder, else the current folder)")
    out.add_argument("--volume-dir", help="volume folder (default DL_vol_files/binary)")
    out.add_argument("--mask-dir", help="mask folder (default DL_seg_files/binary)")
    out.add_argument("--case-prefix", help="case ids are <prefix><n> (default CS)")
    out.add_argument("--output-pattern", action="append", metavar="NAME=PATTERN",
                     help="output file name of a modality, with <ID> (default CS<ID>_CTA_Binary.npy, "
                          "CS<ID>_NCCT_Reg_Binary.npy, else CS<ID>_<NAME>.npy); repeatable")
    out.add_argument("--mask-pattern", help="mask file name with <ID> (default CS<ID>_seg_corrected_binary.npy)")
    chk = p.add_argument_group("checks")
    chk.add_argument("--max-size", type=int, metavar="PIXELS",
                     help="largest in-plane size (rows or cols); larger inputs are refused unless --resize "
                          "(default with --config: the smaller of INPUT_SHAPE's rows and cols)")
    chk.add_argument("--resize", action="store_true", help="downsample larger inputs to --max-size (images "
                     "area-averaged, masks nearest neighbour, spacing updated)")
    chk.add_argument("--multiclass", action="store_true",
                     help="masks may hold class ids 0..32 instead of only 0/1 (0/255)")
    chk.add_argument("--overwrite", action="store_true", help="replace existing output files that differ")
    chk.add_argument("--dry-run", action="store_true", help="read and check everything, write nothing")
    chk.add_argument("--skip-bad-cases", action="store_true",
                     help="report a bad case and continue instead of stopping at it")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with the nifti, dicom and slices subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m clotseg.importers",
        description="Convert NIfTI files, DICOM series or 2D slice folders into ClotSeg's input layout: one float32 "
                    "(H, W, D) volume per modality (HU, axial slices last) and a uint8 mask per case, a CS<n>.json "
                    f"sidecar (spacing, orientation, sources) and {IMPORT_MAP} (source name -> case id). "
                    "Case names become CS1, CS2, ... in sorted order (numeric names keep their number). "
                    "See docs/importing.md.")
    sub = parser.add_subparsers(dest="importer", required=True, metavar="{nifti,dicom,slices}")
    common = _common_parser()
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("nifti", parents=[common], formatter_class=fmt, epilog=_EPILOG_NIFTI,
                       help="one NIfTI file per case and modality",
                       description=_wrap("Pair NIfTI files into cases by patterns with a {case} placeholder "
                                         "(and * / ? wildcards), reorient to RAS (axial slices last), keep HU "
                                         "(scl_slope/inter applied)."))
    p.add_argument("source", type=Path, help="folder with the NIfTI files")
    p.add_argument("--modality", action="append", required=True, metavar="NAME=PATTERN",
                   help="modality and its file pattern, e.g. CTA='{case}_cta.nii.gz'; repeat in channel order")
    p.add_argument("--mask", metavar="PATTERN", help="mask file pattern, e.g. '{case}_seg.nii.gz' (cases without "
                   "a mask are imported unlabelled)")
    p.add_argument("--mask-root", type=Path, help="folder the mask pattern is relative to (default: source)")
    p.add_argument("--affine-tol", type=float, default=1e-3, metavar="MM",
                   help="largest affine difference between a case's files (default 0.001 mm)")
    p.add_argument("--unregistered", action="store_true", help=_UNREGISTERED_HELP)

    p = sub.add_parser("dicom", parents=[common], formatter_class=fmt, epilog=_EPILOG_DICOM,
                       help="one folder per case, one subfolder per DICOM series",
                       description=_wrap("Stack DICOM series by slice position along the normal, convert to HU with "
                                         "RescaleSlope/Intercept, and refuse mixed series, missing slices, non-uniform "
                                         "spacing and gantry tilt."))
    p.add_argument("source", type=Path, help="folder with one subfolder per case")
    p.add_argument("--modality", action="append", required=True, metavar="NAME=SUBFOLDER",
                   help="modality and its series subfolder in each case folder, e.g. CTA=cta (NAME=. when the "
                        "case folder is the series); repeat in channel order")
    p.add_argument("--mask", metavar="PATTERN", help="NIfTI or .npy mask per case, e.g. '{case}/seg.nii.gz' "
                   "(relative to --mask-root); a NIfTI mask is reoriented onto the series")
    p.add_argument("--mask-root", type=Path, help="folder the mask pattern is relative to (default: source)")
    p.add_argument("--series-list", type=Path, metavar="FILE",
                   help="text file naming the case folders to import, one per line ('#' comments)")
    p.add_argument("--affine-tol", type=float, default=1e-3, metavar="MM",
                   help="largest geometry difference between a case's series and mask (default 0.001 mm)")
    p.add_argument("--unregistered", action="store_true", help=_UNREGISTERED_HELP)
    p.add_argument("--allow-single-slice", action="store_true",
                   help="accept a series folder holding one image file (refused by default: usually a scout "
                        "or key image, or the wrong folder level)")

    p = sub.add_parser("slices", parents=[common], formatter_class=fmt, epilog=_EPILOG_SLICES,
                       help="folders of 2D PNG/JPG/TIFF/.npy slices",
                       description=_wrap("Group 2D slices into cases with a regex matched against each file's path "
                                         "relative to its folder (named groups 'case' and optional 'slice') and stack "
                                         "each case's slices along the last axis. Values stay raw image values "
                                         "(colour -> grey); spacing is unknown."))
    p.add_argument("images", type=Path, nargs="?", help="image folder (one modality, see --modality-name)")
    p.add_argument("--modality", action="append", metavar="NAME=FOLDER",
                   help="instead of IMAGES: one image folder per modality (same slice names); repeatable")
    p.add_argument("--modality-name", default="NCCT", help="name of the single modality (default NCCT; e.g. XRAY)")
    p.add_argument("--masks", type=Path, help="mask folder (may be the image folder, with --mask-regex)")
    p.add_argument("--regex", default=r"(?P<case>\d+)_(?P<slice>\d+)",
                   help=r"regex searched in each image path; default '(?P<case>\d+)_(?P<slice>\d+)'")
    p.add_argument("--mask-regex", help="regex for mask paths (default: --regex)")
    p.add_argument("--mask-threshold", type=float, default=127,
                   help="grey value above which a mask pixel is 1 (default 127; masks of only 0/1 are kept)")
    p.add_argument("--rgb-map", metavar="JSON",
                   help='colour mask classes, RGB order, e.g. \'{"(255,0,0)": 1, "(0,255,0)": 2}\'')
    p.add_argument("--rgb-tolerance", type=int, default=0,
                   help="largest per-channel colour difference still mapped (for JPEG masks; default 0)")
    p.add_argument("--fill-missing-masks", action="store_true",
                   help="slices without a mask file get an empty mask (masks stored only for lesion slices)")
    p.add_argument("--ignore-unmatched", action="store_true",
                   help="skip image files the regex does not match (default: stop with exit status 2 and "
                        "list them)")
    return parser


def options_from_args(args, log=print) -> ImportOptions:
    """ImportOptions from parsed arguments (config values, then explicit flags)."""
    if args.max_size is not None and args.max_size < 1:
        raise InputDataError("--max-size must be a positive number of pixels")
    if args.resize and args.max_size is None and args.config is None:
        raise InputDataError("--resize needs --max-size (or --config, whose INPUT_SHAPE gives the size)")
    settings = None
    if args.config is not None:
        from clotseg.settings import Settings

        settings = Settings.from_file(args.config)
        opts = ImportOptions.from_settings(settings, log=log)
    else:
        opts = ImportOptions(log=log)
    if args.out_root is not None:
        opts.out_root = args.out_root
    for name in ("volume_dir", "mask_dir", "case_prefix", "mask_pattern"):
        if getattr(args, name) is not None:
            setattr(opts, name, getattr(args, name))
    if args.output_pattern:
        opts.output_patterns = {**opts.output_patterns, **parse_assignments(args.output_pattern, "--output-pattern")}
    opts.max_size, opts.resize = args.max_size, args.resize
    if settings is not None and args.max_size is None and not getattr(args, "unregistered", False):
        opts.max_size = int(min(settings.input_shape[:2]))
        log(f"size limit {opts.max_size} px from INPUT_SHAPE {tuple(settings.input_shape)} in {args.config}"
            + (" (larger slices are resized)" if args.resize else " (larger slices are refused; --resize shrinks "
               "them, --max-size sets another limit)"))
    opts.multiclass = opts.multiclass or args.multiclass
    opts.overwrite, opts.dry_run, opts.skip_bad_cases = args.overwrite, args.dry_run, args.skip_bad_cases
    opts.unregistered = bool(getattr(args, "unregistered", False))
    if opts.unregistered and args.max_size is None:
        opts.max_size = None            # raw scans: the PREPROCESS stage crops them to the model input
    return opts


def _plain_single_pattern(args, opts, modalities: list) -> None:
    """With --config, one imported modality is a plain CT series (nothing registered
    to it): unless --output-pattern names it, or the config already describes
    exactly that one modality, its files are <prefix><ID>_<NAME>.npy (no "_Reg")."""
    if args.config is None or len(modalities) != 1:
        return
    (m,) = modalities
    explicit = parse_assignments(args.output_pattern, "--output-pattern") if args.output_pattern else {}
    from clotseg.settings import Settings

    configured = list(Settings.from_file(args.config).modality_patterns)
    if m not in explicit and configured != [m]:
        opts.output_patterns = {**opts.output_patterns, m: f"{opts.case_prefix}<ID>_{m}.npy"}


def run(args, log=print):
    """Run the chosen importer; return (ImportReport, modality names, options)."""
    opts = options_from_args(args, log)
    if args.importer == "nifti":
        from clotseg.importers.nifti import import_nifti

        mods = parse_assignments(args.modality, "--modality")
        _plain_single_pattern(args, opts, list(mods))
        report = import_nifti(args.source, mods, opts, mask=args.mask, mask_root=args.mask_root,
                              affine_tol_mm=args.affine_tol)
    elif args.importer == "dicom":
        from clotseg.importers.dicom import import_dicom

        mods = parse_assignments(args.modality, "--modality")
        _plain_single_pattern(args, opts, list(mods))
        report = import_dicom(args.source, mods, opts, mask=args.mask, mask_root=args.mask_root,
                              series_list=args.series_list, affine_tol_mm=args.affine_tol,
                              allow_single_slice=args.allow_single_slice)
    else:
        from clotseg.importers.slices import import_slices

        if (args.images is None) == (not args.modality):
            raise InputDataError("slices: give either an IMAGES folder or --modality NAME=FOLDER (not both)")
        mods = ({args.modality_name: args.images} if args.images is not None
                else {k: Path(v) for k, v in parse_assignments(args.modality, "--modality").items()})
        _plain_single_pattern(args, opts, list(mods))
        report = import_slices(mods, opts, masks=args.masks, regex=args.regex, mask_regex=args.mask_regex,
                               mask_threshold=args.mask_threshold, rgb_map=args.rgb_map,
                               rgb_tolerance=args.rgb_tolerance, fill_missing_masks=args.fill_missing_masks,
                               ignore_unmatched=args.ignore_unmatched)
    return report, list(mods), opts


def _summary(report, modalities, opts, args, log) -> None:
    verb = "checked (dry run)" if opts.dry_run else "written"
    log(f"{len(report.written)} case(s) {verb}, {len(report.unchanged)} unchanged, {len(report.failed)} skipped; "
        f"volumes in {opts.volume_path}, masks in {opts.mask_path}"
        + ("" if opts.dry_run else f", ids in {opts.volume_path / IMPORT_MAP}"))
    for name, msg in report.failed.items():
        log(f"  skipped {name}: {msg}")
    if args.config is not None:
        log(config_lines(report, modalities, opts, args))
    elif modalities != ["CTA", "NCCT"]:
        pats = {m: opts.pattern_for(m) for m in modalities}
        window, note = ("(0.0, 255.0)", "raw 8-bit image values") if args.importer == "slices" else \
            ("(low, high)", "HU window per modality")
        log("to use these cases, set in config.py:\n"
            f"  MODALITY_PATTERNS = {pats!r}\n"
            f"  WINDOWS_HU = {{{', '.join(f'{m!r}: {window}' for m in modalities)}}}  # {note}\n"
            f"  INPUT_SHAPE = (rows, cols, {len(modalities)})")


def config_lines(report, modalities: list, opts, args) -> str:
    """The config.py lines that fit the imported cases: their file patterns, a
    window per modality, and INPUT_SHAPE from the largest slice size seen
    (rounded up to a multiple of 2**DEPTH) with one channel per modality."""
    from clotseg.settings import Settings

    settings = Settings.from_file(args.config)
    shapes = [tuple(s) for s in report.shapes.values()]
    step = 2 ** settings.depth
    if shapes:
        rows = -(-max(s[0] for s in shapes) // step) * step
        cols = -(-max(s[1] for s in shapes) // step) * step
        size_note = (f"largest slice seen {max(s[0] for s in shapes)}x{max(s[1] for s in shapes)} px, "
                     f"rounded up to a multiple of 2**DEPTH = {step}")
    else:
        rows, cols = settings.input_shape[:2]
        size_note = "no case imported: size kept"
    windows = {}
    for m in modalities:
        if args.importer == "slices":
            windows[m] = (0.0, 255.0)
        else:
            windows[m] = tuple(float(v) for v in settings.windows_hu.get(m) or (0.0, 80.0))
    win_note = ("raw image values; 8-bit range (use the value range for 16-bit images)" if args.importer == "slices"
                else "HU window per modality")
    pats = {m: opts.pattern_for(m) for m in modalities}
    lines = [f"config.py lines for the {len(shapes)} imported case(s) (set them in {args.config}):",
             f"MODALITY_PATTERNS = {pats!r}",
             f"MASK_PATTERN = {opts.mask_pattern_or_default()!r}",
             f"WINDOWS_HU = {{{', '.join(f'{m!r}: {windows[m]!r}' for m in modalities)}}}  # {win_note}"]
    if opts.unregistered:
        lines.append("PREPROCESS = True  # raw scans: registered to the CTA, resampled to TARGET_SPACING_MM and "
                     "cropped to ROI_SIZE_MM, which must fit INPUT_SHAPE")
    else:
        lines.append(f"INPUT_SHAPE = ({rows}, {cols}, {len(modalities)})  # {size_note}; channels = modalities")
    if opts.multiclass and settings.num_classes == 1:
        lines.append("NUM_CLASSES = 2  # or more: background + the classes of --multiclass masks")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Entry point; returns the exit status (0 ok, 2 data/argument problem)."""
    args = build_parser().parse_args(argv)
    try:
        report, modalities, opts = run(args)
        _summary(report, modalities, opts, args, print)
    except ClotSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; files written so far are complete, re-run to finish", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
