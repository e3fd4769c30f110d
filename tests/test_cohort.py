"""Bad input: each problem is a clear error naming the case and file."""

import pickle

import numpy as np
import pytest

from clotseg.cohort import check_cohort, discover_cases
from clotseg.errors import InputDataError
from clotseg.pipeline import prepare_data
from tests.conftest import quiet, tiny_settings, write_case, write_cohort


def _run(settings):
    return prepare_data(settings, log=quiet, demo_if_empty=False)


@pytest.fixture
def s(tmp_path):
    settings = tiny_settings(tmp_path)
    write_cohort(settings, n=4)
    return settings


def test_discovery_is_case_insensitive_and_sorted(s):
    (s.volume_path / "CS3_CTA_Binary.npy").rename(s.volume_path / "cs3_cta_binary.NPY")
    ids = [c.case_id for c in discover_cases(s)]
    assert ids == ["CS1", "CS2", "CS3", "CS4"]


def test_missing_partner_file(s):
    (s.volume_path / "CS2_NCCT_Reg_Binary.npy").unlink()
    with pytest.raises(InputDataError, match=r"case CS2: missing partner.*NCCT"):
        _run(s)


def test_missing_mask_and_orphan_mask(s):
    (s.mask_path / "CS3_seg_corrected_binary.npy").unlink()
    np.save(s.mask_path / "CS9_seg_corrected_binary.npy", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(InputDataError) as exc:
        _run(s)
    assert "case CS3: no mask" in str(exc.value)
    assert "case CS9" in str(exc.value) and "orphan" in str(exc.value)


def test_empty_cohort(tmp_path):
    with pytest.raises(InputDataError, match="no cases found"):
        _run(tiny_settings(tmp_path))


def test_too_few_cases_for_split(tmp_path):
    s = tiny_settings(tmp_path)
    write_cohort(s, n=2)
    with pytest.raises(InputDataError, match="at least 3"):
        _run(s)


@pytest.mark.parametrize("kind,arrays,pattern", [
    ("shape", {"ncct": np.zeros((48, 40, 5), np.float32)}, r"CS2: shape mismatch"),
    ("mask shape", {"mask": np.zeros((48, 40, 5), np.uint8)}, r"CS2: shape mismatch, mask"),
    ("2d", {"cta": np.zeros((48, 40), np.float32)}, r"CS2 CTA file .* 2 dimensions"),
    ("4d", {"cta": np.zeros((48, 40, 6, 1), np.float32)}, r"CS2 CTA file .* 4 dimensions"),
    ("nan", {"cta": np.where(np.eye(48, 40)[..., None], np.nan, 0).repeat(6, 2).astype(np.float32)},
     r"CS2 CTA file .*NaN"),
    ("inf", {"ncct": np.full((48, 40, 6), np.inf, np.float32)}, r"CS2 NCCT file .*NaN/inf"),
    ("overflow", {"cta": np.full((48, 40, 6), 64536, np.uint16)}, r"CS2 CTA.*overflow"),
    ("non-binary", {"mask": np.arange(48 * 40 * 6).reshape(48, 40, 6) % 3}, r"CS2 mask .*not a binary"),
    ("all-255", {"mask": np.full((48, 40, 6), 255, np.uint8)}, r"CS2 mask .*every voxel"),
    ("too large", {"cta": np.zeros((80, 40, 6), np.float32), "ncct": np.zeros((80, 40, 6), np.float32),
                   "mask": np.zeros((80, 40, 6), np.uint8)}, r"CS2: slices are 80x40 .* INPUT_SHAPE 64x64"),
])
def test_bad_case_is_named_and_nothing_written(s, kind, arrays, pattern):
    write_case(s, 2, **arrays)
    with pytest.raises(InputDataError, match=pattern):
        _run(s)
    assert not (s.processed_path / "Sliced").exists()


def test_0_255_mask_is_accepted(s):
    _, _, m = write_case(s, 2)
    write_case(s, 2, mask=(m * 255).astype(np.uint8))
    out = _run(s)
    assert out["shapes"]["CS2"] == (48, 40, 6)


def test_pickled_npy_is_refused(s):
    path = s.volume_path / "CS2_CTA_Binary.npy"
    np.save(path, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputDataError, match=r"CS2 CTA file .*pickled"):
        _run(s)


def test_truncated_npy_is_refused(s):
    path = s.volume_path / "CS2_NCCT_Reg_Binary.npy"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InputDataError, match=r"CS2 NCCT file .*truncated"):
        _run(s)


def test_all_bad_cases_listed_together(s):
    write_case(s, 1, cta=np.full((48, 40, 6), np.nan, np.float32))
    write_case(s, 3, mask=np.full((48, 40, 6), 7, np.uint8))
    with pytest.raises(InputDataError) as exc:
        check_cohort(discover_cases(s), s, progress=False)
    assert "CS1" in str(exc.value) and "CS3" in str(exc.value)


def test_bad_input_keeps_earlier_outputs(s):
    _run(s)
    before = (s.processed_path / "Augmented" / "Training" / "images.npy").read_bytes()
    write_case(s, 4, cta=np.full((48, 40, 6), np.nan, np.float32))
    with pytest.raises(InputDataError):
        _run(s)
    assert (s.processed_path / "Augmented" / "Training" / "images.npy").read_bytes() == before
