"""The validated settings object built from `config.py`.

`config.py` stays a flat module of UPPER_CASE constants that users edit. This
module turns it into a frozen `Settings` dataclass (lower-case field names),
checks every value at once and raises `ConfigError` listing all problems
before any work starts. Stage functions take a `Settings`, so tests build one
with `Settings.from_dict({...}, root=tmp_path)` and never touch `config.py`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import ModuleType
from typing import Any

from clotseg import vessels
from clotseg.errors import ConfigError, StageError
from clotseg.helpers import jsonable

LOSSES = ("dice", "bce_dice", "bce_slice_dice", "topk_bce_dice", "tversky", "focal_tversky")
MODELS = ("unet", "resunet")          # keys of myModels.registry.MODELS (a test keeps them in sync)
NORMALIZATIONS = ("batch", "instance")  # myModels.unet2D.NORMALIZATIONS (a test keeps them in sync)
DROPOUT_KINDS = ("standard", "spatial")  # myModels.unet2D.DROPOUT_KINDS (likewise)
LR_SCHEDULES = ("plateau", "cosine", "poly")
AUGMENTATIONS = ("standard", "strong", "domain")
POSITIVE_SAMPLINGS = ("slice", "case")
_AUTO_BOOL = ("auto", True, False)
# Limits of what the consumers accept (or what could ever fit in memory/disk).
MAX_HU = 1e6                # windows: beyond float32 precision of the HU arithmetic
MIN_WINDOW_WIDTH = 1e-3     # narrower windows make every voxel 0 or 255
MAX_SPACING_MM = 1000.0
MAX_SIDE = 4096             # INPUT_SHAPE rows/cols (a CT slice is 512)
MAX_SAMPLES = 10_000_000    # TARGET_SAMPLE_SIZE_AUG_*: index arrays are built in memory before the store
MAX_EPOCHS = 1_000_000
MAX_BATCH = 65_536
MAX_FILTERS = 8192          # BASE_FILTERS * 2**DEPTH: a 3x3 conv of that width is already ~600M weights
MAX_WORKERS = 256
MAX_RESAMPLES = 1_000_000   # bootstrap: resamples x cases indices are drawn at once
MAX_ROI_MM = 2000.0         # ROI_SIZE_MM: larger than any head
MAX_VESSEL_MM = 50.0        # MAX_VESSEL_DISTANCE_MM: beyond this it filters nothing in a head
MAX_CTA_HU = 3000.0         # MAX_COMPONENT_CTA_HU: above the densest bone and metal, it filters nothing
MIN_TARGET_SPACING_MM = 0.05
IMAGE_INTERPOLATIONS = ("linear", "bspline")
MASK_INTERPOLATIONS = ("volume", "nearest")


def _default_modalities():
    return {"CTA": "CS<ID>_CTA_Binary.npy", "NCCT": "CS<ID>_NCCT_Reg_Binary.npy"}


def _default_windows():
    return {"CTA": (-100.0, 600.0), "NCCT": (0.0, 200.0)}   # see config.py


def _default_clot_appearance_hu():
    return {"NCCT": (-30.0, 10.0)}                           # see config.py


def _shipped_extra_windows_hu():
    return {"CTA": (0.0, 200.0)}                             # the cpu preset's (config.py PRESETS)


def _extra_window_applies(main, win) -> bool:
    """Whether EXTRA_WINDOWS_HU's window `win` can be taken from a modality's WINDOWS_HU
    `main` (None where the modality is absent or has no HU window): it must lie inside it."""
    return _is_window(main) and _is_window(win) and main[0] <= win[0] < win[1] <= main[1]


def _default_display_windows():
    return {"NCCT": (0.0, 80.0)}                             # see config.py


@dataclass(frozen=True)
class Settings:
    """All ClotSeg settings; field names are config.py names in lower case.

    Defaults equal the values shipped in config.py (a test keeps them in sync).
    `root` is the folder relative paths are resolved against.
    """

    root: Path = Path(".")
    # stage flags
    preprocess: bool = False
    train_test_split: bool = True
    slice_extract: bool = True
    data_aug: bool = True
    model_training: bool = True
    # folders and naming
    volume_dir: str = "DL_vol_files/binary"
    mask_dir: str = "DL_seg_files/binary"
    processed_dir: str = "Processed"
    trainings_dir: str = "Trainings"
    case_prefix: str = "CS"
    modality_patterns: dict = field(default_factory=_default_modalities)
    mask_pattern: str = "CS<ID>_seg_corrected_binary.npy"
    windows_hu: dict = field(default_factory=_default_windows)
    display_windows_hu: dict = field(default_factory=_default_display_windows)
    voxel_spacing_mm: tuple | None = None
    # preprocessing (raw cohorts)
    target_spacing_mm: tuple = (0.5, 0.5, 1.0)
    roi_size_mm: tuple = (120.0, 120.0, 80.0)
    image_interpolation: str = "linear"
    mask_interpolation: str = "volume"
    # split
    random_seed: int = 42
    train_perc: float = 0.6
    val_perc: float = 0.2
    stratify_split: bool = True
    split_file: str | None = None
    group_by: str | None = None
    fold: int | None = None
    # slicing and augmentation
    input_shape: tuple = (256, 256, 2)
    target_sample_size_aug_train: int = 20000
    target_sample_size_aug_val: int = 4000
    aug_p: float = 0.8
    augmentation: str = "strong"
    positive_fraction: float = 0.5
    hard_negative_fraction: float = 0.25
    positive_sampling: str = "slice"
    clot_appearance_aug: float = 0.5
    clot_appearance_hu: dict = field(default_factory=_default_clot_appearance_hu)
    synthetic_clot_aug: float = 0.0
    modality_dropout: float = 0.0
    num_workers: int = 0
    context_slices: int = 1
    symmetry_channels: bool = False
    patch_size: tuple | None = None
    # model
    model: str = "unet"
    base_filters: int = 32
    depth: int = 3
    dropout: float = 0.1
    dropout_kind: str = "standard"
    deep_supervision: bool = False
    normalization: str = "batch"
    extra_windows_hu: dict = field(default_factory=dict)
    initial_model: str | None = None
    num_classes: int = 1
    target_name: str = "clot"
    # training
    loss: str = "bce_dice"
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_epochs: int = 1
    ema_momentum: float | None = None
    epochs: int = 100
    batch_size: int = 16
    early_stopping_patience: int = 15
    reduce_lr_patience: int = 5
    max_training_minutes: float | None = None
    mixed_precision: Any = "auto"
    jit_compile: Any = "auto"
    resume: bool = False
    distribution: str | None = None
    # testing
    test_run: str | tuple | None = None
    tune_postprocessing: bool = True
    threshold: float | None = None
    tta_flips: bool | None = None
    min_component_voxels: int | None = None
    min_component_peak: float | None = None
    max_vessel_distance_mm: float | None = 0.0
    max_component_cta_hu: float | None = 130.0
    keep_largest_component: bool | None = None
    save_probabilities: bool = False
    bootstrap_resamples: int = 5000
    # presets
    preset: str | None = None
    presets: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ build
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "root"]

    @classmethod
    def from_dict(cls, values: dict, root: Path | str = ".", preset: str | None = None) -> "Settings":
        """Build and validate settings from a {NAME or name: value} dict.

        Unknown names are errors (a typo would otherwise be silently ignored).
        `preset` (or a PRESET value) overlays PRESETS[preset] on the values.
        Raises ConfigError listing every problem.
        """
        known = set(cls.field_names())
        problems = []
        kwargs = {}
        for name, value in values.items():
            if not isinstance(name, str):
                problems.append(f"setting names must be text, got {name!r}")
                continue
            key = name.lower()
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                extra = f" (did you mean {hint[0].upper()}?)" if hint else ""
                problems.append(f"unknown setting {name}{extra}")
                continue
            kwargs[key] = value
        presets = kwargs.get("presets", {})
        if presets is None:
            presets = {}
        overlays = _preset_overlays(presets, known, problems)
        mods = kwargs.get("modality_patterns", _default_modalities())
        overlays = {name: _preset_channels(overlay, overlay.get("modality_patterns", mods))
                    for name, overlay in overlays.items()}
        base = {k: v for k, v in kwargs.items() if k != "preset"}
        chosen = preset if preset is not None else kwargs.get("preset")
        if chosen is not None:
            if not isinstance(chosen, str):
                problems.append(f"PRESET must be None or the name (text) of an entry of PRESETS, got {chosen!r}")
            elif isinstance(presets, dict) and chosen not in presets:
                known_names = sorted(str(k) for k in presets)
                problems.append(f"PRESET {chosen!r} is not in PRESETS (known: {known_names})")
            elif chosen in overlays:
                kwargs.update(overlays[chosen])
            kwargs["preset"] = chosen
        if problems:
            raise ConfigError(problems)
        root = Path(root).resolve()
        settings = cls(root=root, **_normalise(kwargs))
        problems = _problems_of(settings)
        if not problems:
            # config.py's own folders only: `replace` (e.g. testing.py --input-dir) may point VOLUME_DIR
            # at any folder, and prediction never writes into it
            problems = settings._folder_overlaps()
        # Every preset must be usable, not only the chosen one: each is checked
        # overlaid on the file's own values; problems those values have on
        # their own are not repeated under a preset's name.
        others = {name: overlay for name, overlay in overlays.items() if name != chosen}
        if others:
            own = set(_problems_of(cls(root=root, **_normalise(base))))
            for name, overlay in others.items():
                for problem in _problems_of(cls(root=root, **_normalise({**base, **overlay}))):
                    if problem not in own:
                        problems.append(f"PRESETS[{name!r}]: {problem}")
        if problems:
            raise ConfigError(problems)
        return settings

    @classmethod
    def from_run_config(cls, path: Path | str, root: Path | str = ".", defaults: dict | None = None) -> "Settings":
        """The settings a run saved as JSON (Trainings/<run>/Relevant_Files/config.json).

        Checked as they are loaded: a missing, truncated or edited file, an
        unknown key or an invalid value stops with StageError, one line that
        names this file (not config.py). PRESET/PRESETS are dropped (the
        preset was applied when the run was saved); `defaults` fill in
        settings that runs saved before they existed.
        """
        from clotseg.io import read_json_file

        path = Path(path)
        values = read_json_file(path, "the run's settings", dict)
        values.pop("PRESET", None)
        values.pop("PRESETS", None)
        for name, value in (defaults or {}).items():
            values.setdefault(name, value)
        try:
            return cls.from_dict(values, root=root)
        except ConfigError as exc:
            raise StageError(f"the run's settings {path} are not valid (edited, or saved by another version?): "
                             f"{'; '.join(exc.problems)}") from exc

    @classmethod
    def from_module(cls, module: ModuleType, preset: str | None = None) -> "Settings":
        """Read the UPPER_CASE constants of a config module."""
        values = {k: getattr(module, k) for k in dir(module) if k.isupper() and not k.startswith("_")}
        root = Path(getattr(module, "__file__", ".")).resolve().parent
        return cls.from_dict(values, root=root, preset=preset)

    @classmethod
    def from_file(cls, path: Path | str, preset: str | None = None) -> "Settings":
        """Load a config.py by path (default entry point of the scripts)."""
        path = Path(path).resolve()
        if not path.is_file():
            raise ConfigError([f"config file not found: {path}"])
        spec = importlib.util.spec_from_file_location("_clotseg_user_config", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # a syntax error in config.py is a config problem
            raise ConfigError([f"{path.name} could not be read: {exc!r}"]) from exc
        return cls.from_module(module, preset=preset)

    def replace(self, **changes) -> "Settings":
        """A validated copy with some fields changed (lower-case names)."""
        new = dataclasses.replace(self, **_normalise(changes))
        new.validate()
        return new

    # ------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ConfigError listing every invalid value (none: return).

        Each value is checked against what its consumer accepts (types as
        well as ranges), so a value that passes never fails later inside a
        library call: e.g. RANDOM_SEED below 2**32 (NumPy's legacy seeding
        in keras.utils.set_random_seed), INPUT_SHAPE rows/cols divisible by
        2**DEPTH (both models), NUM_CLASSES below 256 (uint8 masks).
        """
        p: list[str] = []

        def check(ok, msg):
            if not ok:
                p.append(msg)

        for name in ("preprocess", "train_test_split", "slice_extract", "data_aug", "model_training", "resume",
                     "stratify_split", "save_probabilities", "tune_postprocessing", "deep_supervision",
                     "symmetry_channels"):
            check(isinstance(getattr(self, name), bool), f"{name.upper()} must be True or False")
        for name in ("tta_flips", "keep_largest_component"):
            value = getattr(self, name)
            check(value is None or isinstance(value, bool),
                  f"{name.upper()} must be None (the run's validation-tuned choice), True or False")
        for name in ("volume_dir", "mask_dir", "processed_dir", "trainings_dir"):
            value = getattr(self, name)
            ok = isinstance(value, str) and value.strip() != "" and "\0" not in value
            check(ok, f"{name.upper()} must be a folder path (text), got {_short(value)}")
        prefix_ok = isinstance(self.case_prefix, str) and re.fullmatch(r"[A-Za-z0-9]*", self.case_prefix) is not None
        check(prefix_ok, "CASE_PREFIX must be letters/digits")

        mods = self.modality_patterns
        if not isinstance(mods, dict) or not mods:
            p.append("MODALITY_PATTERNS must be a non-empty dict {name: file pattern}")
            mods = {}
        patterns_ok = True
        for name, pat in mods.items():
            if not (isinstance(name, str) and name.strip() and not re.search(r"[/\\\x00-\x1f]", name)):
                p.append(f"MODALITY_PATTERNS names must be non-empty text without slashes, got {_short(name)}")
                patterns_ok = False
            ok = _is_pattern(pat)
            patterns_ok &= ok
            check(ok, f"MODALITY_PATTERNS[{_short(name)}] must be a file name with one <ID> ending in .npy, "
                      f"got {_short(pat)}")
        mask_ok = _is_pattern(self.mask_pattern)
        check(mask_ok, f"MASK_PATTERN must be a file name with one <ID> ending in .npy, got {_short(self.mask_pattern)}")
        if patterns_ok and mask_ok:
            patterns = [pt.lower() for pt in mods.values()] + [self.mask_pattern.lower()]
            check(len(set(patterns)) == len(patterns), "MODALITY_PATTERNS and MASK_PATTERN must all differ")
            # a case id is the text before <ID> (less trailing _/-) + the id: it must be the same in every
            # pattern, or no volume ever finds its partners or its mask
            prefixes = {pt: pt.split("<ID>")[0].rstrip("_-") for pt in list(mods.values()) + [self.mask_pattern]}
            if len(set(prefixes.values())) > 1:
                p.append("MODALITY_PATTERNS and MASK_PATTERN must have the same case prefix before <ID> "
                         f"(case ids are that prefix + the id), got {sorted(set(prefixes.values()))}")
            elif prefix_ok and mods and next(iter(prefixes.values())).lower() != self.case_prefix.lower():
                p.append(f"CASE_PREFIX {self.case_prefix!r} must be the text before <ID> in the file patterns "
                         f"({next(iter(prefixes.values()))!r})")

        wins = self.windows_hu if isinstance(self.windows_hu, dict) else {}
        check(isinstance(self.windows_hu, dict), "WINDOWS_HU must be a dict {modality: (low, high) or None}")
        for name in mods:
            check(name in wins, f"WINDOWS_HU has no entry for modality {_short(name)} (use None if already normalised)")
        for name, win in wins.items():
            check(name in mods, f"WINDOWS_HU[{_short(name)}] names no modality of MODALITY_PATTERNS")
            check(win is None or _is_window(win),
                  f"WINDOWS_HU[{_short(name)}] must be (low, high) with low < high (at least "
                  f"{MIN_WINDOW_WIDTH:g} apart, within +-{MAX_HU:g}), or None; got {_short(win)}")
        shown = self.display_windows_hu
        check(isinstance(shown, dict), "DISPLAY_WINDOWS_HU must be a dict {modality: (low, high)}")
        for name, win in (shown.items() if isinstance(shown, dict) else ()):
            check(_is_window(win),
                  f"DISPLAY_WINDOWS_HU[{_short(name)}] must be (low, high) with low < high (at least "
                  f"{MIN_WINDOW_WIDTH:g} apart, within +-{MAX_HU:g}); got {_short(win)}")
        if self.voxel_spacing_mm is not None:
            sp = self.voxel_spacing_mm
            ok = (isinstance(sp, (tuple, list)) and len(sp) == 3
                  and all(_is_num(v) and 0 < v <= MAX_SPACING_MM for v in sp))
            check(ok, f"VOXEL_SPACING_MM must be None or three positive numbers (mm, at most {MAX_SPACING_MM:g}), "
                      f"got {_short(sp)}")

        self._check_preprocessing(check, mods, wins)

        check(_is_int(self.random_seed) and 0 <= self.random_seed < 2**32,
              "RANDOM_SEED must be an integer from 0 to 2**32 - 1 (NumPy's seed range)")
        check(_is_num(self.train_perc) and 0 < self.train_perc < 1, "TRAIN_PERC must be in (0, 1)")
        check(_is_num(self.val_perc) and 0 < self.val_perc < 1, "VAL_PERC must be in (0, 1)")
        if _is_num(self.train_perc) and _is_num(self.val_perc):
            check(self.train_perc + self.val_perc < 1,
                  f"TRAIN_PERC + VAL_PERC must be below 1 so some cases are left for testing "
                  f"(got {self.train_perc} + {self.val_perc} = {self.train_perc + self.val_perc:g})")

        if self.fold is not None:
            folds = self.n_folds
            check(_is_int(self.fold) and folds is not None and 0 <= self.fold < folds,
                  f"FOLD must be None or an integer from 0 to {(folds or 2) - 1} (the cases outside Testing "
                  f"make (TRAIN_PERC + VAL_PERC) / VAL_PERC = {folds} folds), got {_short(self.fold)}")
            check(self.split_file is None and self.group_by is None,
                  "FOLD draws the folds of the seeded split: with SPLIT_FILE or GROUP_BY set FOLD = None "
                  "(give each fold's cohorts in its own SPLIT_FILE)")

        depth_ok = _is_int(self.depth) and 1 <= self.depth <= 6
        check(depth_ok, "DEPTH must be an integer from 1 to 6")
        check(not (self.deep_supervision is True and depth_ok and self.depth < 2),
              "DEEP_SUPERVISION needs DEPTH >= 2 (DEPTH 1 has no coarser decoder level to supervise)")
        shape = self.input_shape
        shape_ok = isinstance(shape, tuple) and len(shape) == 3 and all(_is_int(v) and v > 0 for v in shape)
        check(shape_ok, f"INPUT_SHAPE must be (rows, cols, channels) of positive integers, got {_short(shape)}")
        if shape_ok:
            check(shape[2] == len(mods),
                  f"INPUT_SHAPE has {shape[2]} channel(s) but MODALITY_PATTERNS names {len(mods)} modalities")
            check(max(shape[:2]) <= MAX_SIDE, f"INPUT_SHAPE rows and cols must be at most {MAX_SIDE}, got {shape[:2]}")
            if depth_ok:
                # both models (unet: max pooling, resunet: stride-2 blocks) halve rows/cols DEPTH times
                step = 2 ** self.depth
                check(shape[0] % step == 0 and shape[1] % step == 0,
                      f"INPUT_SHAPE rows and cols must be multiples of 2**DEPTH = {step}, got {shape[:2]}")
        patch = self.patch_size
        if patch is not None:
            patch_ok = isinstance(patch, tuple) and len(patch) == 2 and all(_is_int(v) and v > 0 for v in patch)
            check(patch_ok, f"PATCH_SIZE must be None or (rows, cols) of positive integers, got {_short(patch)}")
            if patch_ok and shape_ok:
                check(patch[0] <= shape[0] and patch[1] <= shape[1],
                      f"PATCH_SIZE {patch} must fit inside INPUT_SHAPE rows and cols {shape[:2]}")
            if patch_ok and depth_ok:
                step = 2 ** self.depth
                check(patch[0] % step == 0 and patch[1] % step == 0,
                      f"PATCH_SIZE rows and cols must be multiples of 2**DEPTH = {step}, got {patch}")
        counts = {}
        for name in ("target_sample_size_aug_train", "target_sample_size_aug_val", "epochs", "batch_size",
                     "base_filters", "early_stopping_patience", "reduce_lr_patience"):
            value = getattr(self, name)
            ok = _is_int(value) and value >= 1
            check(ok, f"{name.upper()} must be a positive integer, got {_short(value)}")
            counts[name] = value if ok else None
        for name in ("target_sample_size_aug_train", "target_sample_size_aug_val"):
            if counts[name] is not None:
                check(counts[name] <= MAX_SAMPLES, f"{name.upper()} must be at most {MAX_SAMPLES:,}")
        if counts["epochs"] is not None:
            check(counts["epochs"] <= MAX_EPOCHS, f"EPOCHS must be at most {MAX_EPOCHS:,}")
        if counts["batch_size"] is not None:
            check(counts["batch_size"] <= MAX_BATCH, f"BATCH_SIZE must be at most {MAX_BATCH}")
            if counts["target_sample_size_aug_train"] is not None:
                check(counts["batch_size"] <= counts["target_sample_size_aug_train"],
                      f"BATCH_SIZE {counts['batch_size']} is larger than TARGET_SAMPLE_SIZE_AUG_TRAIN "
                      f"{counts['target_sample_size_aug_train']}: one batch must fit in the training samples")
        if counts["base_filters"] is not None and depth_ok:
            check(counts["base_filters"] * 2 ** self.depth <= MAX_FILTERS,
                  f"BASE_FILTERS * 2**DEPTH (the bottleneck's filters) must be at most {MAX_FILTERS}, got "
                  f"{counts['base_filters']} * {2 ** self.depth}")
        check(_is_num(self.aug_p) and 0 <= self.aug_p <= 1, "AUG_P must be in [0, 1]")
        check(_is_num(self.positive_fraction) and 0 <= self.positive_fraction <= 1, "POSITIVE_FRACTION must be in [0, 1]")
        check(_is_int(self.num_workers) and 0 <= self.num_workers <= MAX_WORKERS,
              f"NUM_WORKERS must be 0 (all cores) or a positive integer up to {MAX_WORKERS}")
        check(_is_num(self.dropout) and 0 <= self.dropout < 1, "DROPOUT must be in [0, 1)")
        check(_is_int(self.num_classes) and 1 <= self.num_classes <= 255,
              "NUM_CLASSES must be an integer from 1 to 255 (masks are stored as uint8 class ids)")
        check(isinstance(self.target_name, str) and 0 < len(self.target_name.strip()) <= 40
              and self.target_name.isprintable(),
              "TARGET_NAME must be a short name of what is segmented (1 to 40 printable characters), e.g. 'clot'")
        check(self.initial_model is None or (isinstance(self.initial_model, str) and self.initial_model.strip() != ""
                                             and "\0" not in self.initial_model),
              "INITIAL_MODEL must be None (random initialisation) or the path of a .keras model or a run folder, "
              f"got {_short(self.initial_model)}")
        check(self.split_file is None or (isinstance(self.split_file, str) and self.split_file.strip() != ""),
              "SPLIT_FILE must be None (ClotSeg splits) or the path of a JSON or CSV file {case: cohort}")
        check(self.group_by is None or (isinstance(self.group_by, str) and re.fullmatch(r"\w[\w.\-]{0,63}", self.group_by)),
              "GROUP_BY must be None or the name of a sidecar field (such as 'source' or 'site')")
        check(_one_of(self.loss, LOSSES), f"LOSS must be one of {LOSSES}, got {_short(self.loss)}")
        check(_is_num(self.learning_rate) and 0 < self.learning_rate < 1, "LEARNING_RATE must be in (0, 1)")
        check(_auto_bool(self.mixed_precision), "MIXED_PRECISION must be 'auto', True or False")
        check(_auto_bool(self.jit_compile), "JIT_COMPILE must be 'auto', True or False")
        check(self.distribution is None or _one_of(self.distribution, ("data_parallel",)),
              "DISTRIBUTION must be None or 'data_parallel'")
        names = self.test_runs
        check(self.test_run is None or (bool(names) and len(set(names)) == len(names) and all(
                  isinstance(n, str) and re.fullmatch(r"[\w.\-]+", n) and n not in (".", "..") for n in names)),
              "TEST_RUN must be None, a run folder name (no path separators) or a list of different run "
              "folder names (an ensemble)")
        check(self.threshold is None or (_is_num(self.threshold) and 0 < self.threshold < 1),
              "THRESHOLD must be None (the run's validation-tuned value) or in (0, 1)")
        check(self.min_component_voxels is None
              or (_is_int(self.min_component_voxels) and self.min_component_voxels >= 0),
              "MIN_COMPONENT_VOXELS must be None (the run's validation-tuned value) or a non-negative integer")
        check(self.min_component_peak is None
              or (_is_num(self.min_component_peak) and 0 <= self.min_component_peak < 1),
              "MIN_COMPONENT_PEAK must be None (the run's validation-tuned value) or in [0, 1)")
        check(self.max_vessel_distance_mm is None
              or (_is_num(self.max_vessel_distance_mm) and 0 <= self.max_vessel_distance_mm <= MAX_VESSEL_MM),
              f"MAX_VESSEL_DISTANCE_MM must be None (the run's validation-tuned value), 0 (off) or a distance "
              f"in mm up to {MAX_VESSEL_MM:g}")
        vessel_on = _is_num(self.max_vessel_distance_mm) and self.max_vessel_distance_mm > 0
        check(not vessel_on or (isinstance(self.windows_hu, dict) and vessels.available(mods, self.windows_hu)),
              "MAX_VESSEL_DISTANCE_MM > 0 needs a modality named 'CTA' in MODALITY_PATTERNS with an HU window "
              "in WINDOWS_HU (the vessels are its voxels of at least 100 HU)")
        check(self.max_component_cta_hu is None
              or (_is_num(self.max_component_cta_hu) and 0 <= self.max_component_cta_hu <= MAX_CTA_HU),
              f"MAX_COMPONENT_CTA_HU must be None (the run's validation-tuned value), 0 (off) or a CTA value "
              f"in HU up to {MAX_CTA_HU:g}")
        # no check that a CTA exists: without one the lumen filter is held off
        # (postprocessing.fixed_by), so its default suits a cohort without CTA
        check(_one_of(self.model, MODELS), f"MODEL must be one of {MODELS}, got {_short(self.model)}")
        check(_one_of(self.normalization, NORMALIZATIONS),
              f"NORMALIZATION must be one of {NORMALIZATIONS}, got {_short(self.normalization)}")
        check(_one_of(self.dropout_kind, DROPOUT_KINDS),
              f"DROPOUT_KIND must be one of {DROPOUT_KINDS}, got {_short(self.dropout_kind)}")
        check(_one_of(self.augmentation, AUGMENTATIONS),
              f"AUGMENTATION must be one of {AUGMENTATIONS}, got {_short(self.augmentation)}")
        check(_one_of(self.lr_schedule, LR_SCHEDULES),
              f"LR_SCHEDULE must be one of {LR_SCHEDULES}, got {_short(self.lr_schedule)}")
        check(_is_int(self.warmup_epochs) and 0 <= self.warmup_epochs <= MAX_EPOCHS,
              "WARMUP_EPOCHS must be a non-negative integer")
        check(self.ema_momentum is None or (_is_num(self.ema_momentum) and 0 < self.ema_momentum < 1),
              "EMA_MOMENTUM must be None (off) or in (0, 1), e.g. 0.99")
        check(_is_int(self.context_slices) and 0 <= self.context_slices <= 5,
              "CONTEXT_SLICES must be an integer from 0 to 5 (slices above and below fed as extra channels)")
        check(_is_num(self.hard_negative_fraction) and 0 <= self.hard_negative_fraction <= 1,
              "HARD_NEGATIVE_FRACTION must be in [0, 1]")
        check(_one_of(self.positive_sampling, POSITIVE_SAMPLINGS),
              f"POSITIVE_SAMPLING must be one of {POSITIVE_SAMPLINGS}, got {_short(self.positive_sampling)}")
        check(_is_num(self.clot_appearance_aug) and 0 <= self.clot_appearance_aug <= 1,
              "CLOT_APPEARANCE_AUG must be in [0, 1] (share of clot samples whose clot intensity is moved)")
        check(_is_num(self.synthetic_clot_aug) and 0 <= self.synthetic_clot_aug <= 1,
              "SYNTHETIC_CLOT_AUG must be in [0, 1] (share of clot samples that are clot-free slices with a "
              "clot drawn into an artery)")
        check(not (_is_num(self.synthetic_clot_aug) and self.synthetic_clot_aug > 0)
              or (isinstance(self.windows_hu, dict) and "CTA" in mods and self.windows_hu.get("CTA") is not None),
              "SYNTHETIC_CLOT_AUG draws a clot into the CTA's opacified lumen: it needs a modality named CTA "
              "in MODALITY_PATTERNS with an HU window in WINDOWS_HU; set it to 0")
        looks = self.clot_appearance_hu
        check(isinstance(looks, dict), "CLOT_APPEARANCE_HU must be a dict {modality: (low, high)} of HU offsets")
        for name, shift in (looks.items() if isinstance(looks, dict) else ()):
            # the default names NCCT and CTA and leaves other modality sets alone (a single-channel
            # CT, say); ranges a user wrote must name modalities, so a misspelt name is not a silent no-op
            check(looks == _default_clot_appearance_hu() or name in mods,
                  f"CLOT_APPEARANCE_HU[{_short(name)}] names no modality of MODALITY_PATTERNS")
            check(isinstance(shift, (tuple, list)) and len(shift) == 2 and all(_is_num(v) for v in shift)
                  and -MAX_HU <= shift[0] <= shift[1] <= MAX_HU,
                  f"CLOT_APPEARANCE_HU[{_short(name)}] must be (low, high) HU offsets with low <= high "
                  f"(within +-{MAX_HU:g}); got {_short(shift)}")
        extra = self.extra_windows_hu
        check(isinstance(extra, dict), "EXTRA_WINDOWS_HU must be a dict {modality: (low, high)} of HU windows")
        # the shipped value names the CTA and leaves a cohort alone where it does not apply (no CTA,
        # a CTA without HU window or a narrower one): the presets serve one-channel cohorts too. A
        # value the user wrote must apply, so a misspelt name or a clipped window is not a silent no-op
        shipped = extra == _shipped_extra_windows_hu()
        for name, win in (extra.items() if isinstance(extra, dict) and not shipped else ()):
            main = wins.get(name) if name in mods else None
            check(name in mods, f"EXTRA_WINDOWS_HU[{_short(name)}] names no modality of MODALITY_PATTERNS")
            check(name not in mods or main is not None,
                  f"EXTRA_WINDOWS_HU[{_short(name)}]: modality {_short(name)} has no HU window in WINDOWS_HU "
                  "(None), so there is no HU scale to take a second window from")
            check(_is_window(win), f"EXTRA_WINDOWS_HU[{_short(name)}] must be (low, high) with low < high (at "
                  f"least {MIN_WINDOW_WIDTH:g} apart, within +-{MAX_HU:g}); got {_short(win)}")
            # the network only sees the WINDOWS_HU codes: HU clipped there cannot be windowed again
            check(not (_is_window(win) and _is_window(main)) or _extra_window_applies(main, win),
                  f"EXTRA_WINDOWS_HU[{_short(name)}] {_short(win)} must lie inside the modality's WINDOWS_HU "
                  f"{_short(main)}: it is taken from those codes, where HU outside them are already clipped")
        check(_is_num(self.modality_dropout) and 0 <= self.modality_dropout <= 1,
              "MODALITY_DROPOUT must be in [0, 1] (share of training samples with one modality blanked)")
        check(not (_is_num(self.modality_dropout) and self.modality_dropout > 0
                   and isinstance(self.modality_patterns, dict) and len(self.modality_patterns) < 2),
              "MODALITY_DROPOUT needs at least two modalities in MODALITY_PATTERNS")
        check(self.max_training_minutes is None
              or (_is_num(self.max_training_minutes) and self.max_training_minutes > 0),
              "MAX_TRAINING_MINUTES must be None or a positive number of minutes")
        check(_is_int(self.bootstrap_resamples) and 100 <= self.bootstrap_resamples <= MAX_RESAMPLES,
              f"BOOTSTRAP_RESAMPLES must be an integer from 100 to {MAX_RESAMPLES:,}")
        check(self.preset is None or isinstance(self.preset, str), "PRESET must be None or a preset name (text)")
        check(isinstance(self.presets, dict), "PRESETS must be a dict {name: {SETTING: value, ...}}")
        if not p:
            try:  # the run saves its settings as JSON (Relevant_Files/config.json)
                json.dumps(self.to_dict(), allow_nan=False)
            except (TypeError, ValueError) as exc:
                p.append(f"settings must be plain Python values (numbers, text, lists, dicts, None): {exc}")
        if p:
            raise ConfigError(p)

    def _check_preprocessing(self, check, mods: dict, wins: dict) -> None:
        """TARGET_SPACING_MM, ROI_SIZE_MM and the interpolations; with PREPROCESS
        also that the crop fits INPUT_SHAPE and that there is a CTA in HU."""
        sp, roi = self.target_spacing_mm, self.roi_size_mm
        sp_ok = (isinstance(sp, tuple) and len(sp) == 3
                 and all(_is_num(v) and MIN_TARGET_SPACING_MM <= v <= MAX_SPACING_MM for v in sp))
        check(sp_ok, f"TARGET_SPACING_MM must be three numbers (row, col, slice) from {MIN_TARGET_SPACING_MM:g} to "
                     f"{MAX_SPACING_MM:g} mm, got {_short(sp)}")
        roi_ok = isinstance(roi, tuple) and len(roi) == 3 and all(_is_num(v) and 0 < v <= MAX_ROI_MM for v in roi)
        check(roi_ok, f"ROI_SIZE_MM must be three positive numbers (row, col, slice) of at most {MAX_ROI_MM:g} mm, "
                      f"got {_short(roi)}")
        check(_one_of(self.image_interpolation, IMAGE_INTERPOLATIONS),
              f"IMAGE_INTERPOLATION must be one of {IMAGE_INTERPOLATIONS}, got {_short(self.image_interpolation)}")
        check(_one_of(self.mask_interpolation, MASK_INTERPOLATIONS),
              f"MASK_INTERPOLATION must be one of {MASK_INTERPOLATIONS}, got {_short(self.mask_interpolation)}")
        if self.preprocess is not True:
            return
        check("CTA" in mods, "PREPROCESS needs a modality named 'CTA' in MODALITY_PATTERNS: the other modalities are "
                             "registered to it and the Circle of Willis is found from its contrast-filled vessels")
        for name in mods:
            check(wins.get(name) is not None, f"PREPROCESS needs volumes in HU: WINDOWS_HU[{_short(name)}] must be "
                                              "(low, high), not None")
        shape = self.input_shape
        if sp_ok and roi_ok and isinstance(shape, tuple) and len(shape) == 3 and all(_is_int(v) for v in shape):
            # the same rounding as clotseg.preprocessing.roi.box_size
            box = [max(1, int(round(float(r) / float(s)))) for r, s in zip(roi, sp)]
            check(box[0] <= shape[0] and box[1] <= shape[1],
                  f"ROI_SIZE_MM {tuple(roi[:2])} mm at TARGET_SPACING_MM {tuple(sp[:2])} is {box[0]}x{box[1]} pixels, "
                  f"larger than INPUT_SHAPE {shape[0]}x{shape[1]}: lower ROI_SIZE_MM, raise TARGET_SPACING_MM or "
                  "raise INPUT_SHAPE")

    def _folder_overlaps(self) -> list[str]:
        """PROCESSED_DIR / TRAININGS_DIR equal to or inside VOLUME_DIR / MASK_DIR: the runs would
        write into the user's input folders (checked by `from_dict`, for the settings of a file)."""
        out = []
        inputs = {"VOLUME_DIR": self.volume_path, "MASK_DIR": self.mask_path}
        outputs = {"PROCESSED_DIR": self.processed_path, "TRAININGS_DIR": self.trainings_path}
        for oname, opath in outputs.items():
            for iname, ipath in inputs.items():
                if opath == ipath or ipath in opath.parents:
                    out.append(f"{oname} {opath} must not be or lie inside {iname} {ipath}: ClotSeg writes "
                               "there, and it never changes its input folders")
                    break
        return out

    # ------------------------------------------------------------------ paths
    def path(self, relative: str) -> Path:
        return (self.root / relative).resolve()

    @property
    def volume_path(self) -> Path:
        return self.path(self.volume_dir)

    @property
    def mask_path(self) -> Path:
        return self.path(self.mask_dir)

    @property
    def processed_path(self) -> Path:
        return self.path(self.processed_dir)

    @property
    def trainings_path(self) -> Path:
        return self.path(self.trainings_dir)

    @property
    def split_file_path(self) -> Path | None:
        """SPLIT_FILE resolved against the config's folder (None: ClotSeg splits)."""
        return None if self.split_file is None else self.path(self.split_file)

    @property
    def initial_model_path(self) -> Path | None:
        """INITIAL_MODEL resolved against the config's folder: a run folder
        stands for its Best_Model/model.keras (None: random initialisation)."""
        if self.initial_model is None:
            return None
        from clotseg.layout import BEST_MODEL

        path = self.path(self.initial_model)
        return path / BEST_MODEL if path.is_dir() else path

    @property
    def modalities(self) -> list[str]:
        return list(self.modality_patterns)

    @property
    def model_channels(self) -> int:
        """Channels the network sees: every modality at 2 * CONTEXT_SLICES + 1
        slices, twice with SYMMETRY_CHANNELS (the planes, then mirrored)."""
        return len(self.modality_patterns) * (2 * self.context_slices + 1) * (2 if self.symmetry_channels else 1)

    @property
    def applied_extra_windows(self) -> dict:
        """EXTRA_WINDOWS_HU's entries that apply to this cohort's modalities, in
        MODALITY_PATTERNS' order (an entry of the shipped value may not: validate)."""
        extra = self.extra_windows_hu
        return {name: tuple(extra[name]) for name in self.modalities
                if name in extra and _extra_window_applies(self.windows_hu.get(name), extra[name])}

    @property
    def extra_window_channels(self) -> list[tuple[int, float, float]]:
        """EXTRA_WINDOWS_HU as the network derives it: one (channel, scale, offset)
        per input channel of a modality named there (every context plane, and
        the mirrored planes with SYMMETRY_CHANNELS), in channel order; an entry
        of the shipped value that does not apply to this cohort gives none. The
        channel holds codes x / 255 in [0, 1] of the modality's WINDOWS_HU
        (low, high); the extra window (lo, hi) is clip(x * scale + offset, 0, 1)
        with scale = (high - low) / (hi - lo) and offset = (low - lo) / (hi - lo)."""
        planes = 2 * self.context_slices + 1
        mods, applied = self.modalities, self.applied_extra_windows
        out = []
        for half in range(2 if self.symmetry_channels else 1):
            for m, name in enumerate(mods):
                if name not in applied:
                    continue
                (low, high), (lo, hi) = self.windows_hu[name], applied[name]
                scale, offset = (float(high) - float(low)) / (hi - lo), (float(low) - lo) / (hi - lo)
                out.extend(((half * len(mods) + m) * planes + p, scale, offset) for p in range(planes))
        return out

    @property
    def model_input_shape(self) -> tuple:
        """(rows, cols, model_channels): INPUT_SHAPE with the 2.5D context channels."""
        return (*self.input_shape[:2], self.model_channels)

    @property
    def training_input_shape(self) -> tuple:
        """Input shape of the model being trained: model_input_shape, or
        (None, None, model_channels) with PATCH_SIZE, so that the same network
        trains on patches and validates on whole slices. The saved best model
        always takes model_input_shape."""
        if self.patch_size is None or tuple(self.patch_size) == tuple(self.input_shape[:2]):
            return self.model_input_shape
        return (None, None, self.model_channels)

    # ---------------------------------------------------------- serialisation
    @property
    def n_folds(self) -> int | None:
        """Folds of the cases outside Testing for FOLD: (TRAIN_PERC + VAL_PERC) / VAL_PERC rounded
        (4 for 60 / 20 / 20, so each fold's Validation is VAL_PERC of the cohort); None for invalid
        percentages."""
        if not (_is_num(self.train_perc) and _is_num(self.val_perc) and self.val_perc > 0):
            return None
        return max(2, int(round((self.train_perc + self.val_perc) / self.val_perc)))

    @property
    def test_runs(self) -> tuple:
        """TEST_RUN as a tuple of run names: () for None, one name, or the ensemble's names."""
        if self.test_run is None:
            return ()
        return (self.test_run,) if isinstance(self.test_run, str) else tuple(self.test_run)

    def to_dict(self) -> dict:
        """JSON-ready {NAME: value} (paths relative, tuples as lists)."""
        out = {}
        for name in self.field_names():
            out[name.upper()] = _jsonable(getattr(self, name))
        return out

    def to_json(self) -> str:
        # Not sort_keys: MODALITY_PATTERNS' order is the model's channel order, and a
        # run saved with its modalities sorted would be tuned and tested on swapped channels.
        return json.dumps(self.to_dict(), indent=2)

    def subset(self, names) -> dict:
        """{NAME: value} for the named settings, for stage fingerprints."""
        return {n.upper(): _jsonable(getattr(self, n.lower())) for n in names}


def _problems_of(settings: "Settings") -> list[str]:
    try:
        settings.validate()
    except ConfigError as exc:
        return list(exc.problems)
    return []


_NOT_IN_PRESETS = {"preset", "presets"}


def _preset_overlays(presets, known: set, problems: list) -> dict:
    """{preset name: {setting (lower case): value}} of the well-formed PRESETS
    entries; what is malformed (not a dict of dicts, names that are not text,
    unknown settings, PRESET/PRESETS inside a preset) goes to `problems`."""
    if not isinstance(presets, dict):
        problems.append("PRESETS must be a dict {name: {SETTING: value, ...}}, got a "
                        f"{type(presets).__name__}")
        return {}
    out = {}
    for name, entry in presets.items():
        if not isinstance(name, str) or not name:
            problems.append(f"PRESETS names must be non-empty text, got {name!r}")
            continue
        if not isinstance(entry, dict):
            problems.append(f"PRESETS[{name!r}] must be a dict {{SETTING: value}}, got a {type(entry).__name__}")
            continue
        overlay, ok = {}, True
        for key, value in entry.items():
            if not isinstance(key, str):
                problems.append(f"PRESETS[{name!r}] has a setting name that is not text: {key!r}")
                ok = False
            elif key.lower() in _NOT_IN_PRESETS:
                problems.append(f"PRESETS[{name!r}] cannot set {key} (presets do not nest)")
                ok = False
            elif key.lower() not in known:
                hint = difflib.get_close_matches(key.lower(), known, n=1)
                extra = f" (did you mean {hint[0].upper()}?)" if hint else ""
                problems.append(f"PRESETS[{name!r}] sets unknown setting {key}{extra}")
                ok = False
            else:
                overlay[key.lower()] = value
        if ok:
            out[name] = overlay
    return out


def _preset_channels(overlay: dict, modality_patterns) -> dict:
    """A preset's INPUT_SHAPE sets the rows and cols; its channel count
    follows MODALITY_PATTERNS (one channel per modality, the only valid
    count), so the shipped presets (written for CTA + NCCT) also serve a
    one-channel or a three-modality cohort without editing PRESETS."""
    shape = overlay.get("input_shape")
    if (isinstance(modality_patterns, dict) and modality_patterns and isinstance(shape, (tuple, list))
            and len(shape) == 3):
        return {**overlay, "input_shape": (*tuple(shape)[:2], len(modality_patterns))}
    return overlay


def _short(value, limit: int = 60) -> str:
    """repr of a value for a message, cut to `limit` characters."""
    try:
        text = repr(value)
    except Exception:  # a user object whose repr fails
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _one_of(value, options) -> bool:
    """`value in options` for text options, safe for any value (arrays, unhashables)."""
    return isinstance(value, str) and value in options


def _auto_bool(value) -> bool:
    return isinstance(value, bool) or (isinstance(value, str) and value == "auto")


def _is_pattern(pat) -> bool:
    return (isinstance(pat, str) and pat.count("<ID>") == 1 and pat.lower().endswith(".npy")
            and "/" not in pat and "\\" not in pat and "\0" not in pat and not pat.startswith("."))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def _is_window(win) -> bool:
    """(low, high) HU numbers, at least MIN_WINDOW_WIDTH apart, within +-MAX_HU."""
    return (isinstance(win, (tuple, list)) and len(win) == 2 and all(_is_num(v) for v in win)
            and all(abs(v) <= MAX_HU for v in win) and win[1] - win[0] >= MIN_WINDOW_WIDTH)


def _normalise(kwargs: dict) -> dict:
    """Lists from JSON back to tuples where the dataclass expects tuples."""
    out = dict(kwargs)
    for name in ("input_shape", "patch_size"):
        if isinstance(out.get(name), list):
            out[name] = tuple(out[name])
    for name in ("voxel_spacing_mm", "target_spacing_mm", "roi_size_mm", "test_run"):
        if isinstance(out.get(name), list):
            out[name] = tuple(out[name])
    for name in ("windows_hu", "display_windows_hu", "clot_appearance_hu", "extra_windows_hu"):
        if isinstance(out.get(name), dict):
            out[name] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in out[name].items()}
    return out


def _jsonable(value):
    """Settings as JSON values; NaN and non-text keys are kept so that validation's
    json.dumps(allow_nan=False) still reports them."""
    return jsonable(value, finite_only=False, str_keys=False)
