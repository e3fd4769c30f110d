"""Start the Keras backend without C++ log lines on the terminal.

TensorFlow (2.21 here) writes "All log messages before absl::InitializeLog()
...", "oneDNN custom operations are on", "Could not find cuda drivers" and,
on a CPU-only machine, "failed call to cuInit: CUDA error" straight to file
descriptor 2 from C++, before absl reads TF_CPP_MIN_LOG_LEVEL; setting that
variable alone does not silence them. `load_backend()` therefore

1. sets the backends' log levels in the environment (a value the user set
   is kept), so everything logged after start-up is filtered,
2. points the process' fd 2 at a temporary file around `import keras`, the
   backend's import and its first device listing, then restores it. If the
   import fails, what was captured is written to stderr before the error
   propagates, so a real failure stays visible, and
3. under TensorFlow, keeps glibc's malloc from returning the training
   step's buffers to the kernel (`clotseg.allocator`: a 1.6-2x faster CPU step).

training.py, testing.py and `clotseg.runtime` go through it; it runs once per
process and returns the `keras` module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

from clotseg.allocator import tune_malloc

LOG_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",      # TensorFlow / XLA C++ logging: errors that are fatal only
    "TF_CPP_MIN_VLOG_LEVEL": "0",
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "3",
    "ABSL_MIN_LOG_LEVEL": "3",
}

_loaded = None


def set_log_levels() -> None:
    """Quiet C++ logging of TensorFlow/XLA/JAX (keeps values already set)."""
    for key, value in LOG_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("jax._src.xla_bridge", "absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def captured_fd2():
    """Send fd 2 to a temporary file; on an exception replay it to stderr."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (detached process): nothing to silence
        yield
        return
    sink = tempfile.TemporaryFile()
    try:
        sys.stderr.flush()
    except Exception:
        pass
    os.dup2(sink.fileno(), 2)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        try:
            sys.stderr.flush()
        except Exception:
            pass
        os.dup2(saved, 2)
        os.close(saved)
        if failed:
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            if text.strip():
                sys.stderr.write(text)
                sys.stderr.flush()
        sink.close()


def _first_device_listing(backend: str) -> None:
    """List the devices once so the driver probing (cuInit) happens here."""
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")
        elif backend == "jax":
            import jax

            jax.devices()
        elif backend == "torch":
            import torch

            torch.cuda.is_available()
    except Exception:  # a broken driver means no GPU; runtime.gpu_names() says so
        pass


def load_backend():
    """Import keras (and its backend) quietly, once; return the keras module."""
    global _loaded
    if _loaded is not None:
        return _loaded
    set_log_levels()
    if "keras" in sys.modules:  # imported before us: the start-up lines are already out
        import keras
    else:
        with captured_fd2():
            import keras

            _first_device_listing(keras.backend.backend())
    # before the first training step or prediction allocates (clotseg.allocator says why)
    tune_malloc(keras.backend.backend())
    _loaded = keras
    return keras
