"""DataGeneratorUNet2D: shapes, dtypes, epoch order, memory mapping, validation."""

import copy

import numpy as np
import pytest

import myModels.DataGeneratorUNet2D as generator_module
from myModels.DataGeneratorUNet2D import DataGeneratorUNet2D

N, H, W, C = 37, 8, 8, 2


def make_cohort():
    """Sample i has code i in pixel (0, 0) of channel 0; its mask is 1 exactly where codes are odd."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, H, W, C), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(N)
    masks = (images[..., 0] % 2).astype(np.uint8)
    return images, masks


@pytest.fixture()
def cohort(tmp_path):
    images, masks = make_cohort()
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "masks.npy", masks)
    return tmp_path / "images.npy", tmp_path / "masks.npy", images, masks


def sample_ids(x):
    return np.asarray(x)[:, 0, 0, 0].astype(int)


def epoch_ids(gen):
    return np.concatenate([sample_ids(gen[i][0]) for i in range(len(gen))])


def test_shapes_dtypes_and_partial_last_batch(cohort):
    img_path, msk_path, images, _ = cohort
    gen = DataGeneratorUNet2D(img_path, msk_path, batch_size=8, shuffle=False)
    assert len(gen) == 5  # ceil(37 / 8)
    x, y = gen[0]
    assert x.shape == (8, H, W, C) and x.dtype == np.float32
    assert y.shape == (8, H, W, 1) and y.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, 1.0}
    # Codes are passed through undivided (the model rescales).
    np.testing.assert_array_equal(x, images[:8].astype(np.float32))
    x_last, y_last = gen[4]
    assert x_last.shape[0] == y_last.shape[0] == 37 - 4 * 8
    with pytest.raises(IndexError):
        gen[5]


def test_masks_stay_aligned_with_images_after_shuffling(cohort):
    img_path, msk_path, _, _ = cohort
    gen = DataGeneratorUNet2D(img_path, msk_path, batch_size=6, seed=3)
    for i in range(len(gen)):
        x, y = gen[i]
        np.testing.assert_array_equal(y[..., 0], (x[..., 0].astype(int) % 2).astype(np.float32))


def test_uint8_images(cohort):
    img_path, msk_path, images, _ = cohort
    x, _ = DataGeneratorUNet2D(img_path, msk_path, batch_size=4, shuffle=False, image_dtype="uint8")[1]
    assert x.dtype == np.uint8
    np.testing.assert_array_equal(x, images[4:8])
    x, _ = DataGeneratorUNet2D(img_path, msk_path, batch_size=4, shuffle=False, image_dtype=np.uint8)[0]
    assert x.dtype == np.uint8
    with pytest.raises(ValueError, match="image_dtype"):
        DataGeneratorUNet2D(img_path, msk_path, image_dtype="float64")


def test_one_hot_targets_for_several_classes():
    images, _ = make_cohort()
    masks = np.zeros((N, H, W), np.uint8)
    masks[:, 0, 1], masks[:, 0, 2] = 1, 2
    _, y = DataGeneratorUNet2D(images, masks, batch_size=4, shuffle=False, num_classes=3)[0]
    assert y.shape == (4, H, W, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(y.sum(-1), 1.0)
    assert y[0, 0, 0, 0] == y[0, 0, 1, 1] == y[0, 0, 2, 2] == 1.0
    masks[0, 5, 5] = 7
    with pytest.raises(ValueError, match="num_classes=3"):
        DataGeneratorUNet2D(images, masks, batch_size=4, shuffle=False, num_classes=3)[0]


def test_every_sample_once_per_epoch_and_seeded_shuffling(cohort):
    img_path, msk_path, _, _ = cohort
    gen = DataGeneratorUNet2D(img_path, msk_path, batch_size=8, seed=5)
    epochs = []
    for _ in range(3):
        ids = epoch_ids(gen)
        np.testing.assert_array_equal(np.sort(ids), np.arange(N))
        epochs.append(ids)
        gen.on_epoch_end()
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], np.arange(N))

    again = DataGeneratorUNet2D(img_path, msk_path, batch_size=8, seed=5)
    for ids in epochs:
        np.testing.assert_array_equal(epoch_ids(again), ids)
        again.on_epoch_end()
    # set_epoch jumps straight to the order of a later epoch (resuming).
    again.set_epoch(2)
    np.testing.assert_array_equal(epoch_ids(again), epochs[2])
    other = DataGeneratorUNet2D(img_path, msk_path, batch_size=8, seed=6)
    assert not np.array_equal(epoch_ids(other), epochs[0])


def test_no_shuffle_keeps_file_order_every_epoch(cohort):
    img_path, msk_path, _, _ = cohort
    gen = DataGeneratorUNet2D(img_path, msk_path, batch_size=10, shuffle=False)
    np.testing.assert_array_equal(epoch_ids(gen), np.arange(N))
    gen.on_epoch_end()
    np.testing.assert_array_equal(epoch_ids(gen), np.arange(N))


def test_indices_select_a_subset(cohort):
    img_path, msk_path, _, _ = cohort
    subset = [30, 2, 11, 7, 19]
    gen = DataGeneratorUNet2D(img_path, msk_path, batch_size=2, indices=subset, seed=1)
    assert len(gen) == 3
    assert sorted(epoch_ids(gen)) == sorted(subset)
    with pytest.raises(ValueError, match="indices"):
        DataGeneratorUNet2D(img_path, msk_path, indices=[0, N])


def test_paths_are_memory_mapped_without_pickle(cohort, monkeypatch):
    img_path, msk_path, _, _ = cohort
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(generator_module.np, "load", spy)
    gen = DataGeneratorUNet2D(str(img_path), msk_path, batch_size=8)
    assert len(calls) == 2
    assert all(c.get("mmap_mode") == "r" and c.get("allow_pickle") is False for c in calls)
    assert isinstance(gen.images, np.memmap) and isinstance(gen.masks, np.memmap)
    x, _ = gen[0]
    assert not isinstance(x, np.memmap)


def test_copy_reopens_files_instead_of_copying_them(cohort):
    img_path, msk_path, _, _ = cohort
    gen = DataGeneratorUNet2D(img_path, msk_path, batch_size=8, seed=2)
    state = gen.__getstate__()
    assert state["images"] is None and state["masks"] is None
    clone = copy.deepcopy(gen)
    assert isinstance(clone.images, np.memmap)
    for i in range(len(gen)):
        np.testing.assert_array_equal(clone[i][0], gen[i][0])


def test_arrays_are_accepted_and_kwargs_reach_pydataset():
    images, masks = make_cohort()
    gen = DataGeneratorUNet2D(images, masks, batch_size=16, workers=2, max_queue_size=3)
    assert gen.workers == 2 and gen.max_queue_size == 3
    assert len(gen) == 3


def test_validation_errors_name_the_files(tmp_path, cohort):
    img_path, msk_path, images, masks = cohort
    np.save(tmp_path / "short_masks.npy", masks[:-1])
    with pytest.raises(ValueError, match="short_masks.npy") as info:
        DataGeneratorUNet2D(img_path, tmp_path / "short_masks.npy")
    assert "images.npy" in str(info.value) and "numbers of samples" in str(info.value)

    np.save(tmp_path / "float_images.npy", images.astype(np.float32))
    with pytest.raises(ValueError, match="images must be uint8") as info:
        DataGeneratorUNet2D(tmp_path / "float_images.npy", msk_path)
    assert "float_images.npy" in str(info.value)

    np.save(tmp_path / "flat_images.npy", images[..., 0])
    with pytest.raises(ValueError, match="4 dimensions"):
        DataGeneratorUNet2D(tmp_path / "flat_images.npy", msk_path)

    np.save(tmp_path / "wide_masks.npy", np.zeros((N, H, W + 1), np.uint8))
    with pytest.raises(ValueError, match="H, W"):
        DataGeneratorUNet2D(img_path, tmp_path / "wide_masks.npy")

    # np.save writes object arrays as pickles; the generator must refuse to read it.
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * N, dtype=object))
    with pytest.raises(ValueError, match="objects.npy"):
        DataGeneratorUNet2D(tmp_path / "objects.npy", msk_path)

    with pytest.raises(FileNotFoundError, match="missing.npy"):
        DataGeneratorUNet2D(tmp_path / "missing.npy", msk_path)
    with pytest.raises(ValueError, match="batch_size"):
        DataGeneratorUNet2D(img_path, msk_path, batch_size=0)


def test_uint8_batches_train_the_model_exactly_as_float32_batches():
    """stages/train.py feeds uint8 codes (a quarter of the bytes to a GPU):
    the model's Rescaling casts them, so the losses and weights after an
    epoch are those of float32 batches."""
    import keras

    from myModels import build_unet2d, get_loss

    images, masks = make_cohort()
    runs = {}
    for dtype in ("float32", "uint8"):
        keras.utils.set_random_seed(0)
        model = build_unet2d((H, W, C), base_filters=4, depth=1, dropout=0.0)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=get_loss("bce_dice"))
        gen = DataGeneratorUNet2D(images, masks, batch_size=8, seed=0, image_dtype=dtype)
        assert gen[0][0].dtype == np.dtype(dtype)
        history = model.fit(gen, epochs=2, verbose=0).history["loss"]
        runs[dtype] = (history, model.get_weights())
    assert runs["uint8"][0] == runs["float32"][0] and runs["uint8"][0][1] != runs["uint8"][0][0]
    assert all(np.array_equal(a, b) for a, b in zip(runs["uint8"][1], runs["float32"][1]))


def test_endless_stream_serves_the_epoch_by_epoch_batches(cohort):
    """Training's endless stream (one data iterator for the whole fit):
    stream batch i is batch i % len of epoch start + i // len, patches and
    all, and Keras' on_epoch_end calls do not move it."""
    img_path, msk_path, _, _ = cohort
    kwargs = dict(batch_size=8, seed=5, patch_size=(4, 4))
    stream = DataGeneratorUNet2D(img_path, msk_path, endless=True, **kwargs)
    assert stream.num_batches is None and len(stream) == 5
    stream.set_epoch(2)  # a resumed run starts its stream at its epoch
    epochwise = DataGeneratorUNet2D(img_path, msk_path, **kwargs)
    assert epochwise.num_batches == 5
    for epoch in (2, 3, 4):
        epochwise.set_epoch(epoch)
        for b in range(len(epochwise)):
            stream.on_epoch_end()  # what Keras calls between epochs: no effect on the stream
            x, y = stream[(epoch - 2) * len(stream) + b]
            x_ref, y_ref = epochwise[b]
            np.testing.assert_array_equal(x, x_ref)
            np.testing.assert_array_equal(y, y_ref)
    whole = DataGeneratorUNet2D(img_path, msk_path, batch_size=8, seed=5, endless=True)
    ids = [np.concatenate([sample_ids(whole[e * 5 + b][0]) for b in range(5)]) for e in range(2)]
    assert all(np.array_equal(np.sort(i), np.arange(N)) for i in ids)  # every sample once per epoch
    assert not np.array_equal(ids[0], ids[1])  # each epoch reshuffled
    with pytest.raises(IndexError):
        stream[-1]


def test_fit_on_the_endless_stream_sees_each_epochs_order(cohort):
    """model.fit with steps_per_epoch = len over the endless stream trains
    epoch by epoch on the same samples as the epoch-by-epoch generator."""
    import keras

    img_path, msk_path, _, _ = cohort
    served = []

    class Recording(DataGeneratorUNet2D):
        def _batch(self, epoch, idx):
            served.append((epoch, idx))
            return super()._batch(epoch, idx)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((H, W, C))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs / 255.0))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    gen = Recording(img_path, msk_path, batch_size=8, seed=5, endless=True)
    history = model.fit(gen, epochs=3, steps_per_epoch=len(gen), shuffle=False, verbose=0).history["loss"]
    assert len(history) == 3
    # the three epochs in order, one stream (TensorFlow first peeks at two batches for their
    # shapes, and its prefetching may run ahead of the last step)
    expected = [(e, b) for e in range(3) for b in range(5)]
    assert any(served[k:k + 15] == expected for k in range(len(served)))
    assert not any(served[k:k + 2] == [(0, 4), (0, 0)] for k in range(len(served)))  # no epoch served twice


def test_training_feeds_fit_one_stream_of_consecutive_epochs(tmp_path, monkeypatch):
    """stages/train.py: the Training generator is one endless stream that
    serves epoch 0's batches, then epoch 1's; validation keeps its finite
    generator."""
    from clotseg.pipeline import prepare_data
    from clotseg.stages import train as train_stage
    from tests.conftest import quiet, tiny_settings, write_cohort

    made = []

    class Spy(DataGeneratorUNet2D):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.served = []
            made.append(self)

        def _batch(self, epoch, idx):
            self.served.append((epoch, idx))
            return super()._batch(epoch, idx)

    monkeypatch.setattr(train_stage, "DataGeneratorUNet2D", Spy)
    s = tiny_settings(tmp_path, epochs=2)
    write_cohort(s, n=8)
    prepare_data(s, log=quiet, demo_if_empty=False)
    train_stage.run_training(s, log=quiet)
    training, validation = sorted(made, key=lambda g: not g.shuffle)
    assert training.endless and training.num_batches is None and not validation.endless
    n = len(training)
    expected = [(e, b) for e in range(2) for b in range(n)]
    assert any(training.served[k:k + 2 * n] == expected for k in range(len(training.served)))
    assert validation.served  # validated on its own generator
