"""DISTRIBUTION = 'data_parallel' trains on two virtual CPU devices, with each
backend's own engine (TF MirroredStrategy, JAX keras.distribution.DataParallel)."""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    if os.environ["KERAS_BACKEND"] == "tensorflow":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from clotseg.io import read_json
    from clotseg.pipeline import prepare_data
    from clotseg.stages.train import run_training
    from conftest import tiny_settings, write_cohort
    s = tiny_settings({out!r}, distribution="data_parallel", epochs=1, batch_size=8,
                      target_sample_size_aug_train=32, target_sample_size_aug_val=8)
    write_cohort(s)
    prepare_data(s, log=lambda *a: None, demo_if_empty=False)
    run = run_training(s, log=print)
    record = read_json(run / "run.json")
    assert record["replicas"] == 2, record
    assert record["status"] == "finished" and (run / "Best_Model" / "model.keras").is_file()
    print("REPLICAS", record["replicas"])
""")


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_data_parallel_on_two_virtual_cpus(tmp_path, backend):
    if backend == "jax":
        pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "NO_ALBUMENTATIONS_UPDATE": "1",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    script = SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), out=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "REPLICAS 2" in done.stdout
