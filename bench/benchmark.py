"""ClotSeg throughput benchmark: data stages, generator, training, inference.

    python -m bench.benchmark [--size small|cpu|full] [--note TEXT] [--only PARTS]
                              [--jit-compile auto|true|false] [--mixed-precision auto|true|false]
                              [--context-slices K] [--dropout RATE]
                              [--out bench/results/NAME.json]

Prints one JSON object (stdout; progress goes to stderr). Inputs are a
synthetic phantom cohort built in a temporary folder, which is deleted at
the end; the repository's data folders are never touched.

Measurements (all wall-clock, after the warm-up stated per measurement):
    slicing       clotseg.stages.slicing.slice_cohort on every case, samples/s
    augmentation  clotseg.stages.augment.augment_cohort with 1 worker and with
                  all cores (NUM_WORKERS = 0), samples/s and the speed-up
    generator     DataGeneratorUNet2D over a memory-mapped uint8 store,
                  samples/s for image_dtype float32 and uint8
    training      model.fit with the real generator as stages/train.py builds
                  it (uint8 batches), images/s over epochs 2..n
    host_inference  the same loop with a free stand-in for the model: the
                  host side's capacity, which bounds the inference figure
    inference     clotseg.stages.evaluate.predict_cases, testing.py's whole
                  prediction loop (load .npy, window, pad, predict the plain
                  and two flipped members, crop, threshold, 3D components,
                  uncertainty, write), on the trained model over copies of
                  the cohort's volumes: volume slices/s per batch size,
                  after a warm-up pass
Keras, TensorFlow and JAX are imported only after the data stages, so the
augmentation workers (spawned, they re-import this module) stay light.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

SIZES = {
    # CPU smoke size: a few steps, about 1-3 minutes on 2 busy cores.
    "small": {"input_shape": (64, 64, 2), "base_filters": 8, "depth": 2, "batch_size": 16,
              "cases": 10, "in_plane": (48, 64), "slices": (16, 24),
              "train_samples": 256, "aug_samples": 2048, "epochs": 4,
              "inference_copies": 2, "inference_batches": (32,)},
    # The `cpu` preset's network (16 filters, depth 3, batch 32) on its 64x64 training patches.
    "cpu": {"input_shape": (64, 64, 2), "base_filters": 16, "depth": 3, "batch_size": 32,
            "cases": 10, "in_plane": (48, 64), "slices": (16, 24),
            "train_samples": 960, "aug_samples": 960, "epochs": 4,
            "inference_copies": 2, "inference_batches": (32,)},
    # The default model (config.py) on a GPU machine.
    "full": {"input_shape": (256, 256, 2), "base_filters": 32, "depth": 3, "batch_size": 32,
             "cases": 12, "in_plane": (192, 256), "slices": (30, 50),
             "train_samples": 8192, "aug_samples": 8192, "epochs": 4,
             "inference_copies": 10, "inference_batches": (64, 256)},
}
PARTS = ("slicing", "augmentation", "generator", "training", "inference", "host_inference")
MIN_SECONDS = 1.0  # repeat short measurements until at least this long


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def repeat_for(fn, min_seconds: float = MIN_SECONDS) -> tuple[int, float]:
    """Call fn() until min_seconds have passed (at least once); (calls, seconds)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls, elapsed


def rate(n: float, seconds: float) -> float:
    return round(n / seconds, 2) if seconds > 0 else float("nan")


# ------------------------------------------------------------------- inputs
def make_settings(root: Path, cfg: dict, num_workers: int = 0, context_slices: int = 0,
                  mixed_precision="auto", dropout: float | None = None):
    """Settings for a phantom cohort under `root` with the size's model and
    sample counts; `context_slices` 0 gives the plain two-channel input
    (CTA, NCCT), k adds 2k neighbour planes per modality (CONTEXT_SLICES);
    `dropout` None keeps config.py's DROPOUT."""
    from clotseg.settings import Settings

    return Settings.from_dict({
        "VOLUME_DIR": "vol", "MASK_DIR": "seg", "PROCESSED_DIR": "Processed", "TRAININGS_DIR": "Trainings",
        "INPUT_SHAPE": cfg["input_shape"], "BASE_FILTERS": cfg["base_filters"], "DEPTH": cfg["depth"],
        "BATCH_SIZE": cfg["batch_size"], "EPOCHS": cfg["epochs"], "RANDOM_SEED": 0,
        "TARGET_SAMPLE_SIZE_AUG_TRAIN": cfg["train_samples"], "TARGET_SAMPLE_SIZE_AUG_VAL": cfg["batch_size"],
        "NUM_WORKERS": num_workers, "CONTEXT_SLICES": context_slices, "MIXED_PRECISION": mixed_precision,
        **({"DROPOUT": dropout} if dropout is not None else {}),
    }, root=root)


def build_inputs(root: Path, cfg: dict, context_slices: int = 0, mixed_precision="auto",
                 dropout: float | None = None):
    """Write the phantom cohort and run stages 1-3; return (settings, prepare_data's result)."""
    from clotseg.phantom import write_cohort
    from clotseg.pipeline import prepare_data

    settings = make_settings(root, cfg, context_slices=context_slices, mixed_precision=mixed_precision,
                             dropout=dropout)
    write_cohort(settings.volume_path, settings.mask_path, cfg["cases"], seed=0,
                 in_plane=cfg["in_plane"], slices=cfg["slices"], progress=False)
    return settings, prepare_data(settings, log=log, demo_if_empty=False)


# ------------------------------------------------------------ data stages
def measure_slicing(settings, prepared: dict, root: Path) -> dict:
    """slice_cohort over every case of the cohort (load .npy, window to uint8
    codes, pad, write memmaps). Returns samples (slices) per second."""
    from clotseg.stages.slicing import slice_cohort

    cases, shapes = prepared["cases"], prepared["shapes"]
    n = sum(shapes[c.case_id][2] for c in cases)
    counter = iter(range(10**6))
    calls, seconds = repeat_for(
        lambda: slice_cohort(settings, cases, shapes, root / f"bench_slice_{next(counter)}", "bench", "bench"))
    return {"n_cases": len(cases), "n_samples": n, "repeats": calls, "seconds": round(seconds, 3),
            "samples_per_s": rate(n * calls, seconds)}


def measure_augmentation(settings, root: Path, n: int) -> dict:
    """augment_cohort on the sliced Training cohort, `n` samples, with 1 worker
    and with all cores. Wall time includes the start of the spawned workers."""
    from clotseg.stages.augment import CHUNK, augment_cohort

    out = {"n_samples": n, "chunk": CHUNK}
    for label, workers in (("one_worker", 1), ("all_cores", os.cpu_count() or 1)):
        start = time.perf_counter()
        manifest = augment_cohort(settings.replace(num_workers=workers), "Training", n,
                                  root / f"bench_aug_{label}", "bench")
        seconds = time.perf_counter() - start
        out[label] = {"workers": manifest["workers"], "seconds": round(seconds, 3), "samples_per_s": rate(n, seconds)}
    out["speedup"] = round(out["one_worker"]["seconds"] / out["all_cores"]["seconds"], 2)
    return out


# ------------------------------------------------------------ keras parts
def measure_generator(settings, batch_size: int) -> dict:
    """DataGeneratorUNet2D alone over the augmented Training store (uint8
    memmap, shuffled): every batch of an epoch, repeated for >= 1 s.
    Returns samples/s and MiB/s of x delivered, per image_dtype."""
    from clotseg.stages.augment import augmented_dir
    from clotseg.stages.common import IMAGES, MASKS
    from myModels.DataGeneratorUNet2D import DataGeneratorUNet2D

    store = augmented_dir(settings, "Training")
    out = {"store": "Augmented/Training", "batch_size": batch_size}
    for dtype in ("float32", "uint8"):
        gen = DataGeneratorUNet2D(store / IMAGES, store / MASKS, batch_size=batch_size, shuffle=True,
                                  seed=0, image_dtype=dtype)

        def epoch(gen=gen):
            for i in range(len(gen)):
                gen[i]
            gen.on_epoch_end()

        calls, seconds = repeat_for(epoch)
        n = len(gen.indices) * calls
        x_bytes = n * gen.images[0].size * gen.image_dtype.itemsize
        out["n_samples"] = len(gen.indices)
        out[dtype] = {"epochs": calls, "seconds": round(seconds, 3), "samples_per_s": rate(n, seconds),
                      "mib_per_s": rate(x_bytes / 2**20, seconds)}
    return out


def compiled_model(settings, jit: bool):
    """The ClotSeg U-Net compiled as stages/train.py compiles it."""
    import keras

    from myModels import build_unet2d, get_loss, get_metrics

    model = build_unet2d(settings.model_input_shape, settings.base_filters, settings.depth,
                         settings.dropout, settings.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss=get_loss(settings.loss),
                  metrics=get_metrics(settings.num_classes), jit_compile=jit)
    return model


def measure_training(settings, jit: bool, epochs: int) -> tuple[dict, object]:
    """model.fit on the augmented Training store through the real generator
    (no validation), fed uint8 batches as stages/train.py feeds them. Epoch 1
    holds tracing/compilation; images/s is taken over epochs 2..n. Epoch ends
    synchronise the device (logs become floats). Returns (figures, model)."""
    import keras

    from clotseg.stages.augment import augmented_dir
    from clotseg.stages.common import IMAGES, MASKS
    from myModels.DataGeneratorUNet2D import DataGeneratorUNet2D

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    keras.utils.set_random_seed(settings.random_seed)
    store = augmented_dir(settings, "Training")
    gen = DataGeneratorUNet2D(store / IMAGES, store / MASKS, batch_size=settings.batch_size, shuffle=True,
                              seed=settings.random_seed, num_classes=settings.num_classes, image_dtype="uint8",
                              endless=True)  # one stream, as stages/train.py feeds it
    model = compiled_model(settings, jit)
    timer = EpochTimer()
    model.fit(gen, epochs=epochs, steps_per_epoch=len(gen), shuffle=False, callbacks=[timer], verbose=0)
    timed = timer.seconds[1:]
    n = len(gen.indices)
    return {"n_samples_per_epoch": n, "steps_per_epoch": len(gen), "epochs": epochs, "image_dtype": "uint8",
            "epoch_seconds": [round(s, 3) for s in timer.seconds],
            "images_per_s": rate(n * len(timed), sum(timed)),
            "ms_per_step": round(1000 * sum(timed) / (len(timed) * len(gen)), 2)}, model


def inference_cohort(settings, root: Path, copies: int):
    """`copies` copies of the phantom cohort's volumes under new case ids (so
    every case writes its own outputs), as a Settings whose VOLUME_DIR holds
    them, and the cases. Copies share the page cache, as a re-read cohort does."""
    from clotseg.cohort import discover_cases

    src = settings.volume_path
    dst = root / "inference_volumes"
    inf = settings.replace(volume_dir=str(dst), mask_dir=str(root / "inference_no_masks"))
    if dst.is_dir():  # made by an earlier part of this run
        return inf, discover_cases(inf, require_masks=False, warn=log)
    dst.mkdir(parents=True)
    originals = discover_cases(settings, require_masks=False, warn=log)
    number = 0
    for _ in range(copies):
        for case in originals:
            number += 1
            for modality, path in case.volumes.items():
                name = settings.modality_patterns[modality].replace("<ID>", str(number))
                shutil.copyfile(path, dst / name)
            sidecar = src / f"{case.case_id}.json"
            if sidecar.is_file():
                shutil.copyfile(sidecar, dst / f"{settings.case_prefix}{number}.json")
    return inf, discover_cases(inf, require_masks=False, warn=log)


def measure_inference(settings, model, root: Path, copies: int, batch_sizes: tuple) -> dict:
    """testing.py's prediction loop (clotseg.stages.evaluate.predict_cases:
    load, window, pad, plain + 2 flipped forward passes, crop, threshold,
    3D components, uncertainty, .npy/.json writes) over `copies` copies of
    the cohort's volumes, once per batch size after one untimed warm-up pass
    over the first few cases (compilation). Returns volume slices/s each."""
    from clotseg.postprocessing import resolve as resolve_postprocessing
    from clotseg.stages.evaluate import predict_cases

    inf, cases = inference_cohort(settings, root, copies)
    post = resolve_postprocessing(inf, None)
    quiet = lambda *a, **k: None  # noqa: E731
    out = {"n_cases": len(cases), "tta_members": 3, "per_batch_size": {}}
    for batch in batch_sizes:
        predict_cases(model, cases[:4], settings, post, root / f"inference_warmup_{batch}", batch_size=batch,
                      log=quiet)
        start = time.perf_counter()
        done = predict_cases(model, cases, settings, post, root / f"inference_{batch}", batch_size=batch, log=quiet)
        seconds = time.perf_counter() - start
        out["n_slices"] = done["n_slices"]
        out["per_batch_size"][str(batch)] = {"seconds": round(seconds, 3),
                                             "slices_per_s": rate(done["n_slices"], seconds),
                                             "seconds_per_case": round(seconds / len(cases), 4)}
    best = max(out["per_batch_size"].values(), key=lambda r: r["slices_per_s"])
    out["slices_per_s"] = best["slices_per_s"]
    return out


class FreeEnsemble:
    """Stands in for `flip_ensemble(model)` at no cost: every batch gets the
    same (B, H, W, 3) probabilities (a small blob, faint noise elsewhere),
    so `predict_cases` measures the host side alone (load, window, 2.5D,
    batching, crop, mean, threshold, components, uncertainty, writes)."""

    def __init__(self, batch: int, hw: tuple[int, int]):
        import numpy as np

        probs = np.random.default_rng(0).random((batch, *hw, 3), dtype=np.float32) * 0.01
        probs[:, hw[0] // 2:hw[0] // 2 + 10, hw[1] // 2:hw[1] // 2 + 15] = 0.8
        self.probs = probs

    def predict_on_batch(self, x):
        return self.probs


def measure_host_inference(settings, root: Path, copies: int, batch: int) -> dict:
    """`predict_cases` with `FreeEnsemble`: the slices/s the host side of
    testing.py can feed at most (an upper bound for the GPU figure)."""
    from clotseg.postprocessing import PostProcessing
    from clotseg.stages.evaluate import predict_cases

    inf, cases = inference_cohort(settings, root, copies)
    # the lumen filter as testing.py applies it by default (config.py's 130 HU)
    post = PostProcessing(threshold=0.5, tta_flips=True, min_component_voxels=10,
                          max_component_cta_hu=inf.max_component_cta_hu or 0.0)
    quiet = lambda *a, **k: None  # noqa: E731
    free = FreeEnsemble(batch, settings.input_shape[:2])
    start = time.perf_counter()
    done = predict_cases(None, cases, settings, post, root / "host_inference", batch_size=batch, log=quiet,
                         ensemble=free)
    seconds = time.perf_counter() - start
    return {"n_cases": len(cases), "n_slices": done["n_slices"], "batch_size": batch, "seconds": round(seconds, 3),
            "slices_per_s": rate(done["n_slices"], seconds), "cpu_count": os.cpu_count()}


# ------------------------------------------------------------- environment
def versions(backend: str) -> dict:
    """Installed versions of the libraries that set the pace."""
    names = ["keras", "numpy", "albumentations", "albucore", "opencv-python-headless",
             {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend, backend)]
    if backend == "jax":
        names.append("jaxlib")
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict:
    from clotseg import runtime

    info = runtime.describe()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {**info, "versions": versions(info["backend"]), "cpu_count": os.cpu_count(), "cpus_usable": affinity}


# -------------------------------------------------------------------- main
def save_for_backends(settings, model, folder: Path, n: int = 8) -> None:
    """The trained model as training saves it (an uncompiled inference copy)
    and `n` Validation slices (uint8 codes) for bench/backends.py."""
    import numpy as np

    from clotseg.stages.augment import augmented_dir
    from clotseg.stages.common import IMAGES
    from clotseg.stages.train import inference_copy

    folder.mkdir(parents=True, exist_ok=True)
    inference_copy(model).save(folder / "model.keras")
    images = np.load(augmented_dir(settings, "Validation") / IMAGES, mmap_mode="r", allow_pickle=False)
    np.save(folder / "samples.npy", np.ascontiguousarray(images[:n]))


def run(size: str, parts: tuple, note: str | None = None, jit_compile="auto", context_slices: int = 0,
        save_model: Path | None = None, mixed_precision="auto", dropout: float | None = None) -> dict:
    """Run the chosen measurements; return the result dict (see module docstring).

    jit_compile: "auto" (clotseg.runtime.resolve_jit: on under TensorFlow and JAX), True or False.
    mixed_precision: MIXED_PRECISION ("auto": bfloat16 with a GPU), True or False.
    dropout: DROPOUT of the network (None: config.py's).
    """
    cfg = SIZES[size]
    started = time.perf_counter()
    result = {"size": size, "note": note, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": {
        k: cfg[k] for k in ("input_shape", "base_filters", "depth", "batch_size")}}
    root = Path(tempfile.mkdtemp(prefix="clotseg-bench-"))
    try:
        log(f"[bench] building a {cfg['cases']}-case phantom cohort in {root}")
        settings, prepared = build_inputs(root, cfg, context_slices, mixed_precision, dropout)
        result["config"]["model_input_shape"] = list(settings.model_input_shape)
        if "slicing" in parts:
            log("[bench] slicing")
            result["slicing"] = measure_slicing(settings, prepared, root)
        if "augmentation" in parts:
            log("[bench] augmentation (1 worker, all cores)")
            result["augmentation"] = measure_augmentation(settings, root, cfg["aug_samples"])
        from clotseg import runtime  # imports keras: only now, after the spawned workers

        has_gpu = bool(runtime.gpu_names())
        policy = runtime.configure_precision(settings.mixed_precision, has_gpu)
        jit = runtime.resolve_jit(jit_compile)
        result["config"].update(precision=policy, jit_compile=jit)
        result["environment"] = environment()
        if "generator" in parts:
            log("[bench] generator")
            result["generator"] = measure_generator(settings, cfg["batch_size"])
        if "host_inference" in parts:
            log("[bench] host side of inference (free model)")
            result["host_inference"] = measure_host_inference(settings, root, cfg["inference_copies"],
                                                              cfg["inference_batches"][0])
        model = None
        if "training" in parts:
            log(f"[bench] training ({cfg['epochs']} epochs)")
            result["training"], model = measure_training(settings, jit, cfg["epochs"])
            if save_model is not None:
                save_for_backends(settings, model, save_model)
        if "inference" in parts:
            log("[bench] inference")
            if model is None:  # untrained weights: the speed is the same, the components differ
                model = compiled_model(settings, jit)
            result["inference"] = measure_inference(settings, model, root, cfg["inference_copies"],
                                                    cfg["inference_batches"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
        result["total_seconds"] = round(time.perf_counter() - started, 1)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="small",
                   help="small (CPU smoke, default), cpu (the `cpu` preset's network) or full (GPU)")
    p.add_argument("--note", "--backend-note", dest="note", default=None,
                   help="free text stored in the result, e.g. the machine or driver")
    p.add_argument("--only", default=",".join(PARTS),
                   help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
    p.add_argument("--jit-compile", choices=("auto", "true", "false"), default="auto",
                   help="XLA/jax.jit for training and inference; auto = as training.py resolves it (default)")
    p.add_argument("--mixed-precision", choices=("auto", "true", "false"), default="auto",
                   help="MIXED_PRECISION: auto = bfloat16 with a GPU (default); true forces it, also on a CPU")
    p.add_argument("--context-slices", type=int, default=0,
                   help="CONTEXT_SLICES of the benchmark cohort: 0 = the plain (H, W, 2) input (default), "
                        "1 = config.py's default 2.5D input (H, W, 6)")
    p.add_argument("--dropout", type=float, default=None,
                   help="DROPOUT of the benchmark network (default: config.py's)")
    p.add_argument("--save-model", type=Path, default=None,
                   help="with training: save the trained model and a few slices here for bench/backends.py")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here (e.g. bench/results/h100.json)")
    args = p.parse_args(argv)
    parts = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    if args.dropout is not None and not 0.0 <= args.dropout < 1.0:
        p.error(f"--dropout must be in [0, 1), got {args.dropout}")
    # Read at import time by tqdm, albumentations and TensorFlow: set before any import.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    setting = {"auto": "auto", "true": True, "false": False}   # --jit-compile / --mixed-precision -> config value
    result = run(args.size, parts, args.note, setting[args.jit_compile], args.context_slices, args.save_model,
                 setting[args.mixed_precision], args.dropout)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
