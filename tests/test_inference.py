"""Volume inference helpers: crop-back geometry, flip TTA, 3D post-processing."""

import numpy as np
import pytest

from clotseg.intensity import encode
from clotseg.inference import mean_of, postprocess, predict_volume, to_mask


class EchoModel:
    """Stands in for a Keras model: 'probability' = channel 0 code / 255,
    so every output pixel must land exactly where its input pixel was."""

    def __init__(self):
        self.batch_shapes = []

    def predict_on_batch(self, x):
        self.batch_shapes.append(x.shape)
        return x[..., :1].astype(np.float32) / 255.0


def test_predict_volume_crops_back_to_the_input_grid():
    rng = np.random.default_rng(0)
    cta = rng.uniform(-100, 600, (30, 22, 5)).astype(np.float32)
    ncct = rng.uniform(0, 80, (30, 22, 5)).astype(np.float32)
    model = EchoModel()
    prob = predict_volume(model, [cta, ncct], [(-100, 600), (0, 80)], (32, 32), batch_size=4)
    assert prob.shape == (30, 22, 5, 1) and prob.dtype == np.float32
    np.testing.assert_allclose(prob[..., 0], encode(cta, (-100, 600)) / 255.0, atol=1e-6)
    # 5 slices in batches of 4: the remainder is padded, so one batch shape only
    assert {s for s in model.batch_shapes} == {(4, 32, 32, 2)}


def test_flip_tta_of_an_equivariant_model_changes_nothing():
    rng = np.random.default_rng(1)
    vols = [rng.uniform(-100, 600, (16, 12, 3)).astype(np.float32), rng.uniform(0, 80, (16, 12, 3)).astype(np.float32)]
    plain = predict_volume(EchoModel(), vols, [(-100, 600), (0, 80)], (16, 16))
    tta = predict_volume(EchoModel(), vols, [(-100, 600), (0, 80)], (16, 16), tta_flips=True)
    np.testing.assert_allclose(plain, tta, atol=1e-6)


def test_flip_tta_averages_a_biased_model():
    class LeftBiased(EchoModel):
        def predict_on_batch(self, x):
            out = np.zeros(x.shape[:3] + (1,), np.float32)
            out[:, :, : x.shape[2] // 2] = 1.0          # fires on the left half only
            return out

    vols = [np.zeros((8, 8, 2), np.float32)] * 2
    prob = predict_volume(LeftBiased(), vols, [(-100, 600), (0, 80)], (8, 8), tta_flips=True)
    # plain + vertical flip fire on the left, horizontal flip on the right: 2/3 and 1/3
    np.testing.assert_allclose(prob[:, :4, :, 0], 2 / 3, atol=1e-6)
    np.testing.assert_allclose(prob[:, 4:, :, 0], 1 / 3, atol=1e-6)


def test_to_mask_threshold_and_argmax():
    p = np.array([0.2, 0.5, 0.51, 0.9], np.float32).reshape(1, 1, 4, 1)
    assert to_mask(p, 0.5).ravel().tolist() == [0, 0, 1, 1]
    soft = np.zeros((1, 1, 2, 3), np.float32)
    soft[0, 0, 0] = [0.1, 0.7, 0.2]
    soft[0, 0, 1] = [0.1, 0.2, 0.7]
    assert to_mask(soft).ravel().tolist() == [1, 2]


@pytest.fixture
def blobs():
    m = np.zeros((20, 20, 10), np.uint8)
    m[2:6, 2:6, 2:6] = 1          # 64 voxels
    m[10:12, 10:12, 5:7] = 1      # 8 voxels
    m[15, 15, 8] = 1              # 1 voxel
    m[16, 16, 9] = 1              # diagonal neighbour: 26-connected to the previous one
    return m


def test_postprocess_drops_small_components(blobs):
    out = postprocess(blobs, min_voxels=5)
    assert out.sum() == 64 + 8
    assert out[15, 15, 8] == 0
    assert postprocess(blobs, min_voxels=2).sum() == 64 + 8 + 2   # the diagonal pair is one component


def test_postprocess_keep_largest(blobs):
    out = postprocess(blobs, keep_largest=True)
    assert out.sum() == 64 and out[3, 3, 3] == 1
    assert postprocess(np.zeros_like(blobs), keep_largest=True).sum() == 0
    assert postprocess(blobs) is blobs   # nothing asked, nothing done


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_mean_of_matches_numpy_mean_and_leaves_members_alone(n, dtype):
    rng = np.random.default_rng(n)
    members = [rng.random((5, 4, 3, 1)).astype(dtype) for _ in range(n)]
    copies = [m.copy() for m in members]
    out = mean_of(members)
    assert out.dtype == np.float32 and out.shape == (5, 4, 3, 1)
    np.testing.assert_array_equal(out, np.mean(np.stack(members), axis=0, dtype=np.float32))
    for m, c in zip(members, copies):
        np.testing.assert_array_equal(m, c)
    assert not any(np.shares_memory(out, m) for m in members)
