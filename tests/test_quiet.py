"""Terminal hygiene: no C++ start-up lines from TensorFlow/XLA, no cuInit error
on a CPU-only machine, real errors still visible (clotseg.quiet)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOISE = ("absl::InitializeLog", "oneDNN custom operations", "Could not find cuda drivers", "cuInit",
         "cpu_feature_guard", "I0000 00:00", "E0000 00:00", "W0000 00:00")


def _env():
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONPATH=str(ROOT))
    for key in ("TF_CPP_MIN_LOG_LEVEL", "TF_CPP_MIN_VLOG_LEVEL", "GLOG_minloglevel"):
        env.pop(key, None)  # what a user's shell has: nothing set
    return env


def _run(code: str):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)


def test_backend_start_and_device_listing_are_quiet():
    out = _run("from clotseg import runtime\n"
               "print(runtime.gpu_names(), runtime.describe()['backend'])\n"
               "import sys, os\n"
               "os.write(2, b'fd2 restored\\n')\n")
    assert out.returncode == 0, out.stderr
    for line in NOISE:
        assert line not in out.stderr, f"{line!r} on stderr:\n{out.stderr}"
    assert "fd2 restored" in out.stderr        # fd 2 is back after the start-up
    assert out.stdout.strip()


def test_failed_import_replays_what_was_captured():
    out = _run("import os\n"
               "from clotseg.quiet import captured_fd2\n"
               "try:\n"
               "    with captured_fd2():\n"
               "        os.write(2, b'real problem from C++\\n')\n"
               "        raise ImportError('boom')\n"
               "except ImportError:\n"
               "    pass\n"
               "with captured_fd2():\n"
               "    os.write(2, b'start-up chatter\\n')\n")
    assert out.returncode == 0, out.stderr
    assert "real problem from C++" in out.stderr
    assert "start-up chatter" not in out.stderr


def test_user_log_level_is_kept(monkeypatch):
    from clotseg import quiet

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    quiet.set_log_levels()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


def test_prepare_only_stderr_has_no_backend_lines_and_ends_with_outputs(tmp_path):
    config = tmp_path / "config.py"
    config.write_text((ROOT / "config.py").read_text() + "\nNUM_WORKERS = 1\n"
                      "PRESETS['demo'].update({'INPUT_SHAPE': (64, 64, 2), 'TARGET_SAMPLE_SIZE_AUG_TRAIN': 16,"
                      " 'TARGET_SAMPLE_SIZE_AUG_VAL': 8, 'BATCH_SIZE': 8})\n")
    out = subprocess.run([sys.executable, str(ROOT / "training.py"), "--config", str(config), "--preset", "demo",
                          "--prepare-only"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in NOISE:
        assert line not in out.stderr
    stages = [ln for ln in out.stdout.splitlines() if ln.startswith("[")]
    assert any(ln.startswith("[split]") for ln in stages)
    assert any(ln.startswith("[slice Training]") for ln in stages)
    assert any(ln.startswith("[augment Training]") for ln in stages)
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("[prepare] data ready in ") and str(tmp_path / "Processed") in last
