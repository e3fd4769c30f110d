"""A model trained and saved under JAX loads and predicts the same under the
default backend (TensorFlow): the .keras format is backend-neutral. This also
runs the model, losses, metrics and generator under KERAS_BACKEND=jax in CI."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

JAX_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import keras
    sys.path.insert(0, {root!r})
    from myModels import build_unet2d, deep_supervision_losses, get_loss, get_metrics
    from myModels.DataGeneratorUNet2D import DataGeneratorUNet2D
    assert keras.backend.backend() == "jax"
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (16, 32, 32, 2), dtype=np.uint8)
    y = (x[..., 0] > 200).astype(np.uint8)
    gen = DataGeneratorUNet2D(x, y, batch_size=8, seed=0)
    model = build_unet2d((32, 32, 2), base_filters=4, depth=2, dropout=0.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("bce_dice"), metrics=get_metrics(1))
    hist = model.fit(gen, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0]) and 0 <= hist.history["dice"][0] <= 1
    # deep supervision: two outputs, the coarse one scored on the pooled mask
    ds = build_unet2d((32, 32, 2), base_filters=4, depth=2, dropout=0.0, deep_supervision=True)
    losses, weights = deep_supervision_losses("bce_dice", 2)
    ds.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses, loss_weights=weights,
               metrics=[get_metrics(1), []])
    hist = ds.fit(DataGeneratorUNet2D(x, y, batch_size=8, seed=0, num_outputs=2), epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0]) and np.isfinite(hist.history["aux1_loss"][0])
    # instance normalisation (NORMALIZATION = "instance") trains under JAX too
    inst = build_unet2d((32, 32, 2), base_filters=4, depth=2, dropout=0.0, normalization="instance")
    inst.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("bce_dice"))
    hist = inst.fit(DataGeneratorUNet2D(x, y, batch_size=8, seed=0), epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    model.save({out!r} + "/model.keras")
    np.save({out!r} + "/x.npy", x[:4])
    np.save({out!r} + "/pred.npy", np.asarray(model.predict(x[:4], verbose=0)))
    # an ensemble of runs (testing.py --run A B) averages its members under JAX too
    from clotseg.inference import average_models
    other = build_unet2d((32, 32, 2), base_filters=4, depth=2, dropout=0.0)
    xb = x[:4].astype("float32")
    pa, pb = np.asarray(model.predict(xb, verbose=0)), np.asarray(other.predict(xb, verbose=0))
    both = np.asarray(average_models([model, other]).predict(xb, verbose=0))
    np.testing.assert_allclose(both, (pa + pb) / 2, rtol=1e-5, atol=1e-6)
""")


def test_model_saved_under_jax_predicts_the_same_under_tensorflow(tmp_path):
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    script = JAX_SCRIPT.format(root=str(ROOT), out=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    import keras

    import myModels  # noqa: F401  (registers the custom objects)

    model = keras.models.load_model(tmp_path / "model.keras")
    x = np.load(tmp_path / "x.npy")
    ref = np.load(tmp_path / "pred.npy")
    np.testing.assert_allclose(np.asarray(model.predict(x, verbose=0)), ref, atol=1e-4)
