"""Does a saved model predict the same under every Keras backend?

    python -m bench.benchmark --size full --only training --save-model DIR   # any backend
    KERAS_BACKEND=jax python -m bench.backends DIR
    KERAS_BACKEND=torch python -m bench.backends DIR
    python -m bench.backends DIR                                             # TensorFlow

DIR holds `model.keras` (a trained ClotSeg model, saved as training saves
it) and `samples.npy` (uint8 (N, H, W, C) intensity codes, real slices of
the cohort). Under the current KERAS_BACKEND the model is loaded in Keras
safe mode, as testing.py loads it, and predicts the samples twice: with the
dtype policy it was saved with (mixed_bfloat16 when trained on a GPU) and
rebuilt in float32 (the same weights). The probabilities are saved as
DIR/probs_<backend>_<policy>.npy (float32 (N, H, W, K)) and compared with
every other backend's file of the same policy already there: the largest
absolute difference and the Dice between the masks at 0.5. Prints JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _float32_config(config):
    """A model config with every layer's dtype policy set to float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and isinstance(config.get("config"), dict):
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {k: _float32_config(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_float32_config(v) for v in config]
    return config


def predict_both(model, samples):
    """{"saved": probs, "float32": probs}: float32 (N, H, W, K) arrays."""
    import numpy as np

    as_saved = np.asarray(model.predict(samples, batch_size=8, verbose=0), dtype=np.float32)
    rebuilt = model.__class__.from_config(_float32_config(model.get_config()))
    rebuilt.set_weights(model.get_weights())
    as_f32 = np.asarray(rebuilt.predict(samples, batch_size=8, verbose=0), dtype=np.float32)
    return {"saved": as_saved, "float32": as_f32}


def compare(a, b) -> dict:
    """Largest |a - b| and the Dice of the two masks at 0.5 (1.0 when both are empty)."""
    import numpy as np

    ma, mb = a > 0.5, b > 0.5
    both = int(ma.sum() + mb.sum())
    return {"max_abs_diff": float(np.max(np.abs(a - b))), "mean_abs_diff": float(np.mean(np.abs(a - b))),
            "mask_dice": 1.0 if both == 0 else round(2.0 * float((ma & mb).sum()) / both, 6),
            "foreground_voxels": [int(ma.sum()), int(mb.sum())]}


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    folder = Path(args[0])
    import keras
    import numpy as np

    backend = keras.backend.backend()
    model = keras.models.load_model(folder / "model.keras", safe_mode=True, compile=False)
    samples = np.load(folder / "samples.npy", allow_pickle=False)
    probs = predict_both(model, samples)
    saved_policy = model.dtype_policy.name
    result = {"backend": backend, "saved_policy": saved_policy, "n_samples": int(samples.shape[0]),
              "against": {}}
    for policy, p in probs.items():
        np.save(folder / f"probs_{backend}_{policy}.npy", p)
        for other in sorted(folder.glob(f"probs_*_{policy}.npy")):
            name = other.name[len("probs_"):-len(f"_{policy}.npy")]
            if name != backend:
                label = "rebuilt in float32" if policy == "float32" else f"as saved, {saved_policy}"
                result["against"][f"{name} ({label})"] = compare(
                    p, np.load(other, allow_pickle=False))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
