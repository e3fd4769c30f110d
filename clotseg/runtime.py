"""Backend, device and precision detection for Keras 3 (TensorFlow, JAX, torch).

Importing this module imports keras (quietly, through clotseg.quiet), so the
data stages never import it.
"""

from __future__ import annotations

import platform

from clotseg import allocator
from clotseg.quiet import load_backend

keras = load_backend()


def backend() -> str:
    return keras.backend.backend()


def gpu_names() -> list[str]:
    """Names of the accelerators the active backend can use ([] on CPU)."""
    name = backend()
    try:
        if name == "tensorflow":
            import tensorflow as tf

            return [d.name for d in tf.config.list_physical_devices("GPU")]
        if name == "jax":
            import jax

            return [str(d) for d in jax.devices() if d.platform in ("gpu", "cuda", "rocm", "tpu")]
        if name == "torch":
            import torch

            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken driver means no usable GPU, not a crash
        return []
    return []


def tensorboard_available() -> bool:
    """Keras' TensorBoard callback writes through tf.summary: it needs both
    TensorFlow and the tensorboard package (absent on JAX-only GPU hosts)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "tensorboard"))


def resolve_auto(value, has_gpu: bool) -> bool:
    """'auto' -> whether a GPU is present; True/False pass through."""
    return has_gpu if value == "auto" else bool(value)


def inference_batch_size(batch_size: int, has_gpu: bool | None = None) -> int:
    """Slices per forward pass at test time: at least BATCH_SIZE, and at least
    32 on a CPU or 64 on an accelerator (each slice is predicted three times,
    plain and flipped, in one pass). On an H200, testing.py's loop ran 513
    slices/s at 64 and 441 at 256 (README, Performance): beyond 64 the GPU
    gains nothing, and a smaller GPU's memory keeps its margin."""
    if has_gpu is None:
        has_gpu = bool(gpu_names())
    return max(int(batch_size), 64 if has_gpu else 32)


def resolve_jit(value, has_gpu: bool | None = None) -> bool:
    """'auto' -> whether to compile with XLA; True/False pass through.

    'auto' is on under JAX (without jit JAX runs op by op), on under
    TensorFlow only with a GPU, and off under torch (a different,
    slow-to-start compile path). Measured on this project's 2-core CPU
    (`python -m bench.benchmark --size small --only training --jit-compile
    true|false`): TensorFlow's XLA *halves* U-Net training throughput on
    the CPU (114 vs 231 images/s; 124 vs 255 for the demo's 8-filter U-Net
    at batch 32 on 64x64 patches) and slows inference (663 vs 774 slices/s),
    while JAX needs it (170 vs 59 images/s). `has_gpu` None: asks the backend.
    """
    if value != "auto":
        return bool(value)
    name = backend()
    if name == "jax":
        return True
    if name == "tensorflow":
        return bool(gpu_names()) if has_gpu is None else bool(has_gpu)
    return False


def configure_precision(mixed, has_gpu: bool) -> str:
    """Set the global Keras dtype policy; return its name.

    bfloat16 rather than float16: same range as float32, so no loss scaling
    is needed, and Ampere/Hopper GPUs run it at full tensor-core speed.
    """
    policy = "mixed_bfloat16" if resolve_auto(mixed, has_gpu) else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def distribution_scope(mode: str | None):
    """Context in which to build, compile (or load) and fit the model.

    mode None: a no-op. "data_parallel": replicate the model on every local
    device and split each batch between them, with the backend's own engine:
    JAX -> keras.distribution.DataParallel (several hosts: set the
    KERAS_DISTRIBUTION_* variables on each, see README); TensorFlow ->
    tf.distribute.MirroredStrategy, or MultiWorkerMirroredStrategy when
    TF_CONFIG describes several hosts. BATCH_SIZE is the global batch.
    Returns (context manager, number of replicas).
    """
    import contextlib
    import os

    if mode is None:
        return contextlib.nullcontext(), 1
    name = backend()
    if name == "jax":
        if "KERAS_DISTRIBUTION_JOB_ADDRESSES" in os.environ:  # several hosts: join the cluster first
            keras.distribution.initialize()
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext(), len(devices)
    if name == "tensorflow":
        import tensorflow as tf

        strategy = (tf.distribute.MultiWorkerMirroredStrategy() if "TF_CONFIG" in os.environ
                    else tf.distribute.MirroredStrategy())
        return strategy.scope(), strategy.num_replicas_in_sync
    raise ValueError(f"DISTRIBUTION = {mode!r} is not supported with the {name} backend; use tensorflow or jax")


def describe() -> dict:
    """Backend, devices and versions, recorded in every run and benchmark."""
    import numpy as np

    gpus = gpu_names()
    return {
        "backend": backend(),
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "device": gpus[0] if gpus else f"CPU ({platform.processor() or platform.machine()})",
        "n_gpus": len(gpus),
        "malloc": allocator.state(),
    }
