"""Windowing and padding, including property-based checks (hypothesis)."""

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from hypothesis.extra.numpy import arrays

from clotseg.intensity import (center_crop, center_pad, encode, mask_to_samples, normalise_mask,
                               volume_to_samples, window_to_unit)


@given(h=st.integers(1, 40), w=st.integers(1, 40), extra_h=st.integers(0, 30), extra_w=st.integers(0, 30),
       c=st.integers(1, 3), seed=st.integers(0, 2**16))
@hsettings(max_examples=60, deadline=None)
def test_pad_then_crop_is_identity(h, w, extra_h, extra_w, c, seed):
    a = np.random.default_rng(seed).integers(0, 255, (h, w, c), dtype=np.uint8)
    padded = center_pad(a, (h + extra_h, w + extra_w))
    assert padded.shape == (h + extra_h, w + extra_w, c)
    assert np.array_equal(center_crop(padded, (h, w)), a)
    assert padded.sum(dtype=np.int64) == a.sum(dtype=np.int64)  # padding adds zeros only


def test_pad_rejects_larger_slice():
    with pytest.raises(ValueError, match="larger than the model input"):
        center_pad(np.zeros((10, 70)), (64, 64))


@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 6)),
              elements=st.floats(-3000, 3000, width=32)),
       st.floats(-1000, 500), st.floats(1, 2000))
@hsettings(max_examples=80, deadline=None)
def test_window_maps_into_unit_interval_monotonically(vol, low, width):
    out = window_to_unit(vol, (low, low + width))
    assert out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    order = np.argsort(vol.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= -1e-6)


def test_window_known_values():
    vol = np.array([-200.0, -100.0, 250.0, 600.0, 900.0])
    np.testing.assert_allclose(window_to_unit(vol, (-100, 600)), [0, 0, 0.5, 1, 1])
    assert list(encode(vol, (-100, 600))) == [0, 0, 128, 255, 255]


def test_volume_to_samples_channels_and_slices():
    cta = np.zeros((4, 6, 3), np.float32)
    ncct = np.zeros((4, 6, 3), np.float32)
    cta[1, 2, 2] = 600
    ncct[3, 0, 1] = 80
    s = volume_to_samples([cta, ncct], [(-100, 600), (0, 80)], (8, 8))
    assert s.shape == (3, 8, 8, 2) and s.dtype == np.uint8
    assert s[2, 2 + 1, 1 + 2, 0] == 255       # row offset 2, col offset 1
    assert s[1, 2 + 3, 1 + 0, 1] == 255
    inside = np.zeros((8, 8), bool)
    inside[2:6, 1:7] = True
    assert np.all(s[:, ~inside, :] == 0)                    # padding is code 0
    assert np.all(s[0][inside][:, 0] == 36)                # 0 HU in the CTA window: round(100/700*255)
    assert np.all(s[0][inside][:, 1] == 0)                 # 0 HU is the bottom of the NCCT window


@given(st.sampled_from([np.uint8, np.int16, np.float32, np.bool_]), st.booleans(), st.integers(0, 2**16))
@hsettings(max_examples=40, deadline=None)
def test_mask_normalisation_is_binary(dtype, as255, seed):
    m = np.random.default_rng(seed).integers(0, 2, (5, 4, 3))
    if as255 and dtype != np.bool_:
        m = m * 255
    out = normalise_mask(m.astype(dtype))
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
    assert out.sum() == (m > 0).sum()
    assert mask_to_samples(m.astype(dtype), (8, 8)).sum() == (m > 0).sum()
