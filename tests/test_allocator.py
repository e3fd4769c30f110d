"""clotseg.allocator: glibc's malloc keeps TensorFlow's step buffers (the
mallopt calls, when they are made and when not, the run record's word)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clotseg import allocator

ROOT = Path(__file__).resolve().parent.parent


class FakeLibc:
    """Records mallopt(param, value) calls; answers `result`."""

    def __init__(self, result=1):
        self.calls, self.result = [], result

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.result


@pytest.fixture(autouse=True)
def _restore_state():
    saved = allocator._state
    yield
    allocator._state = saved


def test_tensorflow_gets_no_mmapped_chunks_and_a_high_trim_threshold(monkeypatch):
    monkeypatch.delenv(allocator.ENV, raising=False)
    libc = FakeLibc()
    assert allocator.tune_malloc("tensorflow", libc=libc) is True
    assert libc.calls == [(allocator.M_MMAP_MAX, 0), (allocator.M_TRIM_THRESHOLD, 256 * 1024 * 1024)]
    assert allocator.state().startswith("tuned")


@pytest.mark.parametrize("backend", ["jax", "torch", "numpy"])
def test_other_backends_are_left_alone(monkeypatch, backend):
    monkeypatch.delenv(allocator.ENV, raising=False)
    libc = FakeLibc()
    assert allocator.tune_malloc(backend, libc=libc) is False
    assert libc.calls == []
    assert backend in allocator.state()


def test_the_environment_turns_it_off(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "0")
    libc = FakeLibc()
    assert allocator.tune_malloc("tensorflow", libc=libc) is False
    assert libc.calls == []
    assert allocator.ENV in allocator.state()


def test_a_refused_mallopt_is_reported(monkeypatch):
    monkeypatch.delenv(allocator.ENV, raising=False)
    libc = FakeLibc(result=0)
    assert allocator.tune_malloc("tensorflow", libc=libc) is False
    assert "refused" in allocator.state()


def test_no_glibc_means_no_tuning(monkeypatch):
    monkeypatch.delenv(allocator.ENV, raising=False)
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.tune_malloc("tensorflow") is False
    assert "not glibc" in allocator.state()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_backend_start_tunes_this_process_and_records_it():
    """A fresh process: starting the backend through clotseg sets the real
    mallopt parameters under TensorFlow (the run record's `malloc`), not
    under JAX, not with CLOTSEG_MALLOC_TUNING=0."""
    if allocator._glibc() is None:
        pytest.skip("not glibc")
    code = "from clotseg import runtime; print(runtime.describe()['malloc'])"
    seen = {}
    for backend, flag in (("tensorflow", None), ("tensorflow", "0"), ("jax", None)):
        env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT), NO_ALBUMENTATIONS_UPDATE="1")
        env.pop(allocator.ENV, None)
        if flag is not None:
            env[allocator.ENV] = flag
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        seen[(backend, flag)] = out.stdout.strip().splitlines()[-1]
    assert seen[("tensorflow", None)].startswith("tuned")
    assert seen[("tensorflow", "0")].startswith("off")
    assert seen[("jax", None)] == "not tuned (backend jax)"
