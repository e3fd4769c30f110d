"""bench/tiled.py: sliding-window inference (tiles of the training patch size)."""

import numpy as np
import pytest

from bench import tiled


@pytest.mark.parametrize("size,tile,stride,expected", [(128, 64, 32, [0, 32, 64]), (100, 64, 32, [0, 32, 36]),
                                                       (64, 64, 32, [0]), (40, 64, 32, [0])])
def test_tiles_cover_every_pixel_the_last_one_flush_with_the_end(size, tile, stride, expected):
    starts = tiled.tile_starts(size, tile, stride)
    assert starts == expected
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s:s + tile] = True
    assert covered.all()


def test_a_pixelwise_model_gives_back_its_whole_image_prediction():
    """A model whose output at a pixel depends only on that pixel predicts the
    same in tiles as on the whole image: the averaging is exact."""
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 256, (3, 40, 52, 2)).astype(np.uint8)

    def predict(x):
        return (x[..., :1].astype(np.float32) / 255.0) ** 2

    got = tiled.predict_tiled(predict, samples, (16, 24), (8, 12))
    np.testing.assert_allclose(got, predict(samples), rtol=1e-6)


def test_a_position_dependent_model_is_averaged_over_the_tiles_covering_a_pixel():
    samples = np.zeros((1, 8, 8, 1), np.uint8)

    def predict(x):                  # 1 in the first row of every tile, else 0
        out = np.zeros(x.shape[:3] + (1,), np.float32)
        out[:, 0] = 1.0
        return out

    got = tiled.predict_tiled(predict, samples, (4, 8), (2, 8))[0, :, 0, 0]
    # row starts 0, 2, 4: rows 0, 2, 4 are a first row once; rows 2 and 4 are covered twice
    np.testing.assert_allclose(got, [1, 0, 0.5, 0, 0.5, 0, 0, 0])


def test_summary_counts_clots_found_false_positives_and_controls():
    rows = [(True, 0.8, 0), (True, 0.0, 2), (False, 1.0, 0), (False, 0.0, 1)]
    assert tiled.summarise(rows) == {"clot_dice_mean": pytest.approx(0.4), "clots_found": 1, "n_clot_cases": 2,
                                     "fp_components_per_case": 0.75, "controls_with_alarm": 1, "n_controls": 2}


def test_a_missing_run_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        tiled.main([str(tmp_path / "run"), str(tmp_path), str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bench.tiled: ") and err.count("\n") == 1
