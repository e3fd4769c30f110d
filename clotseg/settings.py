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

from clotseg.errors import ConfigError

LOSSES = ("dice", "bce_dice", "tversky", "focal_tversky")
MODELS = ("unet", "resunet")          # keys of myModels.registry.MODELS (a test keeps them in sync)
LR_SCHEDULES = ("plateau", "cosine", "poly")
AUGMENTATIONS = ("standard", "strong")
_AUTO_BOOL = ("auto", True, False)


def _default_modalities():
    return {"CTA": "CS<ID>_CTA_Binary.npy", "NCCT": "CS<ID>_NCCT_Reg_Binary.npy"}


def _default_windows():
    return {"CTA": (-100.0, 600.0), "NCCT": (0.0, 80.0)}


@dataclass(frozen=True)
class Settings:
    """All ClotSeg settings; field names are config.py names in lower case.

    Defaults equal the values shipped in config.py (a test keeps them in sync).
    `root` is the folder relative paths are resolved against.
    """

    root: Path = Path(".")
    # stage flags
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
    voxel_spacing_mm: tuple | None = None
    # split
    random_seed: int = 42
    train_perc: float = 0.6
    val_perc: float = 0.2
    stratify_split: bool = True
    # slicing and augmentation
    input_shape: tuple = (256, 256, 2)
    target_sample_size_aug_train: int = 20000
    target_sample_size_aug_val: int = 4000
    aug_p: float = 0.8
    augmentation: str = "strong"
    positive_fraction: float = 0.5
    hard_negative_fraction: float = 0.25
    num_workers: int = 0
    context_slices: int = 1
    # model
    model: str = "resunet"
    base_filters: int = 32
    depth: int = 3
    dropout: float = 0.1
    num_classes: int = 1
    # training
    loss: str = "bce_dice"
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_epochs: int = 1
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
    test_run: str | None = None
    tune_postprocessing: bool = True
    threshold: float | None = None
    tta_flips: bool | None = None
    min_component_voxels: int | None = None
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
            key = name.lower()
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                extra = f" (did you mean {hint[0].upper()}?)" if hint else ""
                problems.append(f"unknown setting {name}{extra}")
                continue
            kwargs[key] = value
        chosen = preset if preset is not None else kwargs.get("preset")
        if chosen is not None:
            presets = kwargs.get("presets", {}) or {}
            if chosen not in presets:
                problems.append(f"PRESET {chosen!r} is not in PRESETS (known: {sorted(presets)})")
            else:
                for name, value in presets[chosen].items():
                    if name.lower() not in known:
                        problems.append(f"PRESETS[{chosen!r}] sets unknown setting {name}")
                    else:
                        kwargs[name.lower()] = value
            kwargs["preset"] = chosen
        if problems:
            raise ConfigError(problems)
        kwargs = _normalise(kwargs)
        settings = cls(root=Path(root).resolve(), **kwargs)
        settings.validate()
        return settings

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
        """Raise ConfigError listing every invalid value (none: return)."""
        p: list[str] = []

        def check(ok, msg):
            if not ok:
                p.append(msg)

        for name in ("train_test_split", "slice_extract", "data_aug", "model_training", "resume", "stratify_split",
                     "save_probabilities", "tune_postprocessing"):
            check(isinstance(getattr(self, name), bool), f"{name.upper()} must be True or False")
        for name in ("tta_flips", "keep_largest_component"):
            check(getattr(self, name) in (None, True, False),
                  f"{name.upper()} must be None (the run's validation-tuned choice), True or False")
        for name in ("volume_dir", "mask_dir", "processed_dir", "trainings_dir"):
            value = getattr(self, name)
            check(isinstance(value, str) and value.strip() != "", f"{name.upper()} must be a folder path")
        check(isinstance(self.case_prefix, str) and re.fullmatch(r"[A-Za-z0-9]*", self.case_prefix or "") is not None,
              "CASE_PREFIX must be letters/digits")

        mods = self.modality_patterns
        if not isinstance(mods, dict) or not mods:
            p.append("MODALITY_PATTERNS must be a non-empty dict {name: file pattern}")
            mods = {}
        for name, pat in mods.items():
            check(isinstance(pat, str) and pat.count("<ID>") == 1 and pat.lower().endswith(".npy")
                  and "/" not in pat and "\\" not in pat,
                  f"MODALITY_PATTERNS[{name!r}] must be a file name with one <ID> ending in .npy, got {pat!r}")
        check(isinstance(self.mask_pattern, str) and self.mask_pattern.count("<ID>") == 1
              and self.mask_pattern.lower().endswith(".npy") and "/" not in self.mask_pattern,
              f"MASK_PATTERN must be a file name with one <ID> ending in .npy, got {self.mask_pattern!r}")
        patterns = [pt.lower() for pt in mods.values() if isinstance(pt, str)] + [str(self.mask_pattern).lower()]
        check(len(set(patterns)) == len(patterns), "MODALITY_PATTERNS and MASK_PATTERN must all differ")

        wins = self.windows_hu if isinstance(self.windows_hu, dict) else {}
        check(isinstance(self.windows_hu, dict), "WINDOWS_HU must be a dict {modality: (low, high) or None}")
        for name in mods:
            check(name in wins, f"WINDOWS_HU has no entry for modality {name!r} (use None if already normalised)")
        for name, win in wins.items():
            check(name in mods, f"WINDOWS_HU[{name!r}] names no modality of MODALITY_PATTERNS")
            if win is not None:
                ok = (isinstance(win, (tuple, list)) and len(win) == 2
                      and all(isinstance(v, (int, float)) and math.isfinite(v) for v in win) and win[0] < win[1])
                check(ok, f"WINDOWS_HU[{name!r}] must be (low, high) with low < high, or None; got {win!r}")
        if self.voxel_spacing_mm is not None:
            sp = self.voxel_spacing_mm
            ok = (isinstance(sp, (tuple, list)) and len(sp) == 3
                  and all(isinstance(v, (int, float)) and v > 0 and math.isfinite(v) for v in sp))
            check(ok, f"VOXEL_SPACING_MM must be None or three positive numbers (mm), got {sp!r}")

        check(_is_int(self.random_seed) and self.random_seed >= 0, "RANDOM_SEED must be a non-negative integer")
        check(_is_num(self.train_perc) and 0 < self.train_perc < 1, "TRAIN_PERC must be in (0, 1)")
        check(_is_num(self.val_perc) and 0 < self.val_perc < 1, "VAL_PERC must be in (0, 1)")
        if _is_num(self.train_perc) and _is_num(self.val_perc):
            check(self.train_perc + self.val_perc < 1,
                  f"TRAIN_PERC + VAL_PERC must be below 1 so some cases are left for testing "
                  f"(got {self.train_perc} + {self.val_perc} = {self.train_perc + self.val_perc:g})")

        shape = self.input_shape
        shape_ok = isinstance(shape, tuple) and len(shape) == 3 and all(_is_int(v) and v > 0 for v in shape)
        check(shape_ok, f"INPUT_SHAPE must be (rows, cols, channels) of positive integers, got {shape!r}")
        if shape_ok:
            check(shape[2] == len(mods),
                  f"INPUT_SHAPE has {shape[2]} channel(s) but MODALITY_PATTERNS names {len(mods)} modalities")
            if _is_int(self.depth) and 1 <= self.depth <= 6:
                step = 2 ** self.depth
                check(shape[0] % step == 0 and shape[1] % step == 0,
                      f"INPUT_SHAPE rows and cols must be multiples of 2**DEPTH = {step}, got {shape[:2]}")
        for name in ("target_sample_size_aug_train", "target_sample_size_aug_val", "epochs", "batch_size",
                     "base_filters", "early_stopping_patience", "reduce_lr_patience"):
            value = getattr(self, name)
            check(_is_int(value) and value >= 1, f"{name.upper()} must be a positive integer, got {value!r}")
        check(_is_num(self.aug_p) and 0 <= self.aug_p <= 1, "AUG_P must be in [0, 1]")
        check(_is_num(self.positive_fraction) and 0 <= self.positive_fraction <= 1, "POSITIVE_FRACTION must be in [0, 1]")
        check(_is_int(self.num_workers) and self.num_workers >= 0, "NUM_WORKERS must be 0 (all cores) or a positive integer")
        check(_is_int(self.depth) and 1 <= self.depth <= 6, "DEPTH must be an integer from 1 to 6")
        check(_is_num(self.dropout) and 0 <= self.dropout < 1, "DROPOUT must be in [0, 1)")
        check(_is_int(self.num_classes) and self.num_classes >= 1, "NUM_CLASSES must be a positive integer")
        check(self.loss in LOSSES, f"LOSS must be one of {LOSSES}, got {self.loss!r}")
        check(_is_num(self.learning_rate) and 0 < self.learning_rate < 1, "LEARNING_RATE must be in (0, 1)")
        check(self.mixed_precision in _AUTO_BOOL, "MIXED_PRECISION must be 'auto', True or False")
        check(self.jit_compile in _AUTO_BOOL, "JIT_COMPILE must be 'auto', True or False")
        check(self.distribution in (None, "data_parallel"), "DISTRIBUTION must be None or 'data_parallel'")
        check(self.test_run is None or (isinstance(self.test_run, str) and re.fullmatch(r"[\w.\-]+", self.test_run)),
              "TEST_RUN must be None or a run folder name (no path separators)")
        check(self.threshold is None or (_is_num(self.threshold) and 0 < self.threshold < 1),
              "THRESHOLD must be None (the run's validation-tuned value) or in (0, 1)")
        check(self.min_component_voxels is None
              or (_is_int(self.min_component_voxels) and self.min_component_voxels >= 0),
              "MIN_COMPONENT_VOXELS must be None (the run's validation-tuned value) or a non-negative integer")
        check(self.model in MODELS, f"MODEL must be one of {MODELS}, got {self.model!r}")
        check(self.augmentation in AUGMENTATIONS, f"AUGMENTATION must be one of {AUGMENTATIONS}, got {self.augmentation!r}")
        check(self.lr_schedule in LR_SCHEDULES, f"LR_SCHEDULE must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        check(_is_int(self.warmup_epochs) and self.warmup_epochs >= 0, "WARMUP_EPOCHS must be a non-negative integer")
        check(_is_int(self.context_slices) and 0 <= self.context_slices <= 5,
              "CONTEXT_SLICES must be an integer from 0 to 5 (slices above and below fed as extra channels)")
        check(_is_num(self.hard_negative_fraction) and 0 <= self.hard_negative_fraction <= 1,
              "HARD_NEGATIVE_FRACTION must be in [0, 1]")
        check(self.max_training_minutes is None
              or (_is_num(self.max_training_minutes) and self.max_training_minutes > 0),
              "MAX_TRAINING_MINUTES must be None or a positive number of minutes")
        check(_is_int(self.bootstrap_resamples) and self.bootstrap_resamples >= 100,
              "BOOTSTRAP_RESAMPLES must be an integer >= 100")
        if p:
            raise ConfigError(p)

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
    def modalities(self) -> list[str]:
        return list(self.modality_patterns)

    @property
    def model_channels(self) -> int:
        """Channels the network sees: every modality at 2 * CONTEXT_SLICES + 1 slices."""
        return len(self.modality_patterns) * (2 * self.context_slices + 1)

    @property
    def model_input_shape(self) -> tuple:
        """(rows, cols, model_channels): INPUT_SHAPE with the 2.5D context channels."""
        return (*self.input_shape[:2], self.model_channels)

    # ---------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """JSON-ready {NAME: value} (paths relative, tuples as lists)."""
        out = {}
        for name in self.field_names():
            out[name.upper()] = _jsonable(getattr(self, name))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def subset(self, names) -> dict:
        """{NAME: value} for the named settings, for stage fingerprints."""
        return {n.upper(): _jsonable(getattr(self, n.lower())) for n in names}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _normalise(kwargs: dict) -> dict:
    """Lists from JSON back to tuples where the dataclass expects tuples."""
    out = dict(kwargs)
    if isinstance(out.get("input_shape"), list):
        out["input_shape"] = tuple(out["input_shape"])
    if isinstance(out.get("voxel_spacing_mm"), list):
        out["voxel_spacing_mm"] = tuple(out["voxel_spacing_mm"])
    if isinstance(out.get("windows_hu"), dict):
        out["windows_hu"] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in out["windows_hu"].items()}
    return out


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value
