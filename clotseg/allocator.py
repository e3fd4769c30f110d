"""Keep glibc's malloc from handing TensorFlow's buffers back to the kernel.

Why: on a CPU, Keras 3's TensorFlow trainer feeds a `PyDataset` (our
`DataGeneratorUNet2D`) through `tf.data.Dataset.from_generator`. With glibc's
default malloc, the activation and gradient buffers of every step (a few MB
each) are given back to the kernel when freed (trimmed heap tops, mmapped
chunks) and faulted in again, zero-filled, on the next step. Measured on a
2-core AMD EPYC VM (docs/quality-rounds.md "Seventeenth round"; `CLOTSEG_MALLOC_TUNING=0|1
python -m bench.benchmark --size cpu --context-slices 1 --only
training,inference`): the `cpu` preset's network took 1,003 ms per
generator-fed step, 95 of the run's 150 s in the kernel (36 million minor
page faults); keeping freed memory inside the process (no mmapped chunks,
heap tops trimmed only beyond 256 MiB) makes it 622 ms (10 s in the kernel,
2.5 million faults) and testing's loop 60 -> 82 slices/s, the memory peak up
by about 18%. JAX allocates its buffers itself and is left alone.

`tune_malloc(backend)` sets two process-wide mallopt(3) parameters; it is
called once by `clotseg.quiet.load_backend`, before any training or
prediction allocates. It does nothing off glibc (macOS, Windows, musl),
under another backend, or when the environment sets
CLOTSEG_MALLOC_TUNING=0 (to measure without it, or if a machine has little
memory to spare). `state()` says what was done, for the run record.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024   # free memory kept at a heap's top before it goes back to the kernel
ENV = "CLOTSEG_MALLOC_TUNING"
TUNED_BACKENDS = ("tensorflow",)

_state = "not tuned"


def _glibc():
    """The C library when it is glibc (it has mallopt), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc(backend: str, libc=None) -> bool:
    """Keep freed buffers in the process for `backend` "tensorflow" on glibc.

    Args:
        backend: the Keras backend name.
        libc: the C library (tests pass a stand-in); default: this process'.

    Returns:
        True when both parameters were set; the reason it was not is kept in
        `state()`.
    """
    global _state
    if os.environ.get(ENV, "1").strip() == "0":
        _state = f"off ({ENV}=0)"
        return False
    if backend not in TUNED_BACKENDS:
        _state = f"not tuned (backend {backend})"
        return False
    libc = libc if libc is not None else _glibc()
    if libc is None:
        _state = "not tuned (not glibc)"
        return False
    # mallopt returns 1 on success; M_MMAP_MAX = 0 serves every size from the heaps
    done = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    _state = (f"tuned (no mmapped chunks, trim above {TRIM_THRESHOLD_BYTES >> 20} MiB)" if done
              else "not tuned (mallopt refused)")
    return done


def state() -> str:
    """What `tune_malloc` did in this process, in words."""
    return _state
