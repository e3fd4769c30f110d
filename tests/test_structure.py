"""Structure (issue 11): clotseg.layout owns the on-disk names; stages import it
and shared helpers, never each other; testing imports Keras only to predict."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ROOT / "clotseg" / "stages"
SHARED_IN_STAGES = {"__init__", "common"}          # helpers that live beside the stages
LAYOUT_NAMES = ("Best_Model", "Checkpoint_Files", "Relevant_Files", "Predictions", "Sliced", "Augmented",
                "manifest.json", "checked_cases.json", "split.json", "postprocessing.json", "run.json",
                "state.json", "last.keras", "model.keras", "history.csv", "training_curves.png")


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _stage_names() -> list[str]:
    return sorted(p.stem for p in STAGES.glob("*.py") if p.stem not in SHARED_IN_STAGES)


def test_no_stage_imports_another_stage():
    stages = _stage_names()
    assert {"split", "slicing", "augment", "train", "evaluate"} <= set(stages)
    for stage in stages:
        imported = _imports(STAGES / f"{stage}.py")
        others = {f"clotseg.stages.{s}" for s in stages if s != stage}
        assert not imported & others, f"clotseg/stages/{stage}.py imports {sorted(imported & others)}"


def test_testing_never_imports_the_training_stage_and_keras_only_to_predict():
    for path in (ROOT / "testing.py", STAGES / "evaluate.py"):
        assert "clotseg.stages.train" not in _imports(path), path
        top = _imports(path, top_level_only=True)
        assert not any(m == "keras" or m.startswith(("keras.", "myModels", "clotseg.runtime", "clotseg.quiet"))
                       for m in top), f"{path.name} imports Keras at module level: {sorted(top)}"
    tree = ast.parse((STAGES / "evaluate.py").read_text())
    keras_users = {fn.name for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
                   for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))
                   and any(m in ("keras", "myModels", "clotseg.quiet", "clotseg.runtime")
                           for m in ([a.name for a in node.names] if isinstance(node, ast.Import)
                                     else [node.module or ""]))}
    assert keras_users == {"load_model"}, keras_users
    code = ("import sys, testing, clotseg.stages.evaluate, clotseg.evaluate\n"
            "bad = [m for m in ('keras', 'tensorflow', 'jax', 'torch', 'clotseg.stages.train', 'myModels')"
            " if m in sys.modules]\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_layout_names_live_in_layout_only():
    """The literal folder/file names of Processed/ and Trainings/<run>/ appear
    in clotseg/layout.py and nowhere else in the package (docstrings aside)."""
    for path in sorted((ROOT / "clotseg").rglob("*.py")):
        if path.name in ("layout.py", "phantom.py"):
            continue
        tree = ast.parse(path.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                hits = [n for n in LAYOUT_NAMES if node.value == n or node.value.endswith("/" + n)]
                assert not hits, f"{path.relative_to(ROOT)}:{node.lineno} spells {hits[0]!r}; use clotseg.layout"


def test_backwards_compatible_names():
    from clotseg import layout, runs
    from clotseg.pipeline import CHECK_CACHE, TRAIN_COHORTS
    from clotseg.stages.augment import augmented_dir
    from clotseg.stages.slicing import sliced_dir
    from clotseg.stages.split import COHORTS, SPLIT_FILE

    assert augmented_dir is layout.augmented_dir and sliced_dir is layout.sliced_dir
    assert (SPLIT_FILE, CHECK_CACHE, COHORTS, TRAIN_COHORTS) == (
        "split.json", "checked_cases.json", ("Training", "Validation", "Testing"), ("Training", "Validation"))
    assert runs.resolve_run is layout.resolve_run and runs.BEST_MODEL == layout.BEST_MODEL
