"""clotseg.runtime: what "auto" resolves to on each backend."""

from unittest import mock

import pytest

from clotseg import runtime


@pytest.mark.parametrize("backend, has_gpu, expected", [
    ("tensorflow", False, False),   # TF's XLA halves CPU training throughput (bench/benchmark.py)
    ("tensorflow", True, True),
    ("jax", False, True),           # JAX without jit runs op by op
    ("jax", True, True),
    ("torch", True, False),
])
def test_auto_jit_depends_on_backend_and_device(backend, has_gpu, expected):
    with mock.patch.object(runtime, "backend", return_value=backend):
        assert runtime.resolve_jit("auto", has_gpu) is expected


def test_auto_jit_asks_the_backend_for_a_gpu_when_not_told():
    with mock.patch.object(runtime, "backend", return_value="tensorflow"), \
            mock.patch.object(runtime, "gpu_names", return_value=["/physical_device:GPU:0"]):
        assert runtime.resolve_jit("auto") is True
    with mock.patch.object(runtime, "backend", return_value="tensorflow"), \
            mock.patch.object(runtime, "gpu_names", return_value=[]):
        assert runtime.resolve_jit("auto") is False


@pytest.mark.parametrize("value", [True, False])
def test_explicit_jit_passes_through(value):
    for backend in ("tensorflow", "jax", "torch"):
        with mock.patch.object(runtime, "backend", return_value=backend):
            assert runtime.resolve_jit(value, has_gpu=False) is value


@pytest.mark.parametrize("batch, has_gpu, expected", [(16, False, 32), (64, False, 64), (16, True, 64), (256, True, 256)])
def test_test_time_batches_are_larger_on_an_accelerator(batch, has_gpu, expected):
    assert runtime.inference_batch_size(batch, has_gpu) == expected
