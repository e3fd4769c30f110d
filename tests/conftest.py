"""Shared fixtures: tiny settings and tiny hand-made cohorts (no phantom needed)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from clotseg.settings import Settings  # noqa: E402

TINY = {
    "INPUT_SHAPE": (64, 64, 2),
    "TARGET_SAMPLE_SIZE_AUG_TRAIN": 40,
    "TARGET_SAMPLE_SIZE_AUG_VAL": 16,
    "BASE_FILTERS": 8,
    "DEPTH": 2,
    "EPOCHS": 2,
    "BATCH_SIZE": 8,
    "NUM_WORKERS": 1,
    "BOOTSTRAP_RESAMPLES": 200,
    # plain 2D keeps the plumbing tests' shapes (H, W, 2) readable; config.py ships
    # CONTEXT_SLICES = 1, which tests/test_context.py and the end-to-end runs cover
    "CONTEXT_SLICES": 0,
}


def tiny_settings(root, **overrides) -> Settings:
    """Settings for a project rooted at `root`, tiny shapes, overrides by NAME."""
    values = dict(TINY)
    values.update({k.upper(): v for k, v in overrides.items()})
    return Settings.from_dict(values, root=root)


def write_case(settings: Settings, cid: int, shape=(48, 40, 6), clot=True, seed=0, **arrays):
    """Write one hand-made case: a bright CTA vessel along the rows with a
    clot (dark on CTA, bright on NCCT) on the middle slices. `arrays` may
    replace "cta", "ncct" or "mask". Returns (cta, ncct, mask)."""
    rng = np.random.default_rng([seed, cid])
    h, w, d = shape
    cta = np.full(shape, 35.0, np.float32) + rng.normal(0, 3, shape).astype(np.float32)
    ncct = np.full(shape, 35.0, np.float32) + rng.normal(0, 2, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    col = 8 + cid % max(1, w - 16)
    cta[:, col:col + 4, :] = 300.0
    ncct[:, col:col + 4, :] = 42.0
    if clot:
        r0 = 10 + cid % max(1, h - 24)
        zs = slice(d // 3, d // 3 + max(1, d // 3))
        mask[r0:r0 + 8, col:col + 4, zs] = 1
        cta[mask > 0] = 80.0
        ncct[mask > 0] = 65.0
    cta = arrays.get("cta", cta)
    ncct = arrays.get("ncct", ncct)
    mask = arrays.get("mask", mask)
    vol, seg = settings.volume_path, settings.mask_path
    vol.mkdir(parents=True, exist_ok=True)
    seg.mkdir(parents=True, exist_ok=True)
    if cta is not None:
        np.save(vol / f"CS{cid}_CTA_Binary.npy", cta)
    if ncct is not None:
        np.save(vol / f"CS{cid}_NCCT_Reg_Binary.npy", ncct)
    if mask is not None:
        np.save(seg / f"CS{cid}_seg_corrected_binary.npy", mask)
    return cta, ncct, mask


def write_cohort(settings: Settings, n=6, shape=(48, 40, 6), clot_free=(), seed=0):
    for cid in range(1, n + 1):
        write_case(settings, cid, shape=shape, clot=cid not in clot_free, seed=seed)
    return [f"CS{i}" for i in range(1, n + 1)]


@pytest.fixture
def project(tmp_path):
    """Tiny settings rooted in a temp folder with a 6-case cohort on disk."""
    settings = tiny_settings(tmp_path)
    write_cohort(settings)
    return settings


def quiet(*_args, **_kwargs):
    """A `log` that prints nothing."""
