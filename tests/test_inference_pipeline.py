"""The overlapped prediction pipeline of testing.py: `prefetch` (loading ahead
in a thread), `predict_stream` (full fixed-size batches across volumes) and
`predict_cases` (a writer pool), checked against the one-case-at-a-time loop."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from clotseg.cohort import discover_cases
from clotseg.errors import ClotSegError, InputDataError
from clotseg.inference import (member_inputs, postprocess, predict_samples, predict_stream, predict_volume_members,
                               prefetch, to_mask)
from clotseg.io import atomic_save_npy, atomic_write_json, load_npy
from clotseg.postprocessing import PostProcessing
from clotseg.stages import evaluate
from tests.conftest import quiet, tiny_settings, write_case


# ------------------------------------------------------------------ prefetch
def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "clotseg-prefetch" and t.is_alive()]


def _wait_for_no_prefetch_threads(timeout=5.0):
    deadline = time.monotonic() + timeout
    while _prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not _prefetch_threads()


def test_prefetch_keeps_order_and_runs_ahead_boundedly():
    produced = []

    def producer():
        for i in range(20):
            produced.append(i)
            yield i

    it = prefetch(producer(), depth=2)
    assert next(it) == 0
    time.sleep(0.2)  # the producer fills the queue meanwhile, then blocks
    # ahead of the consumer, but bounded: the queue (2) + one item held by the blocked put
    assert 2 <= len(produced) <= 1 + 2 + 1
    assert [0, *it] == list(range(20))
    assert _wait_for_no_prefetch_threads()


def test_prefetch_reraises_the_producer_error_in_place():
    def producer():
        yield 1
        yield 2
        raise InputDataError("case CS3 CTA file x.npy is not a readable .npy array")

    got = []
    with pytest.raises(InputDataError, match="CS3") as info:
        for item in prefetch(producer()):
            got.append(item)
    assert got == [1, 2] and isinstance(info.value, ClotSegError)
    assert _wait_for_no_prefetch_threads()


def test_prefetch_stops_the_producer_when_the_consumer_closes_early():
    state = {"produced": 0, "closed": False}

    def endless():
        try:
            while True:
                state["produced"] += 1
                yield state["produced"]
        finally:
            state["closed"] = True      # runs: the producer thread closes its generator

    it = prefetch(endless(), depth=2)
    assert [next(it) for _ in range(3)] == [1, 2, 3]
    it.close()
    assert _wait_for_no_prefetch_threads()
    assert state["closed"] and state["produced"] <= 3 + 2 + 2
    # a closed-before-started prefetch starts no thread at all
    prefetch(endless()).close()
    assert not _prefetch_threads()


# ------------------------------------------------------------ predict_stream
def _tiny_model(channels=2, classes=1, hw=(8, 8), seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    x = inp = keras.Input((*hw, channels))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(classes, 1, activation="sigmoid" if classes == 1 else "softmax")(x)
    return keras.Model(inp, x)


class Counting:
    """Wraps a model: records the shape of every batch it is asked for."""

    def __init__(self, model, as_list=False):
        self.model, self.as_list, self.shapes = model, as_list, []

    def predict_on_batch(self, x):
        self.shapes.append(x.shape)
        out = self.model.predict_on_batch(x)
        return [out, np.zeros(1)] if self.as_list else out   # deep supervision: full-size output first


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny_model()


def _items(sizes, seed=0, hw=(8, 8), channels=2):
    rng = np.random.default_rng(seed)
    return [(f"item{i}", rng.integers(0, 256, (n, *hw, channels), dtype=np.uint8)) for i, n in enumerate(sizes)]


@pytest.mark.parametrize("as_list", [False, True])
def test_predict_stream_matches_per_item_predictions_with_full_batches_only(tiny_model, as_list):
    bs = 4
    items = _items([0, 1, bs + 3, 0, 2 * bs, 5, 0])
    counting = Counting(tiny_model, as_list)
    out = list(predict_stream(counting, iter(items), bs))
    assert [k for k, _ in out] == [k for k, _ in items]
    total = sum(s.shape[0] for _, s in items)
    assert counting.shapes == [(bs, 8, 8, 2)] * -(-total // bs)   # ceil(total / bs) calls, one shape
    for (_, samples), (_, probs) in zip(items, out):
        assert probs.dtype == np.float32 and probs.shape == (samples.shape[0], 8, 8, 1)
        if samples.shape[0]:
            want = np.asarray(tiny_model.predict_on_batch(samples), np.float32)
            np.testing.assert_allclose(probs, want, atol=1e-6)


def test_predict_stream_edge_cases(tiny_model):
    counting = Counting(tiny_model)
    assert list(predict_stream(counting, [], 4)) == [] and counting.shapes == []
    # only empty items: one padded pass tells K; each item still gets its (0, H, W, K)
    out = list(predict_stream(counting, _items([0, 0]), 4))
    assert [p.shape for _, p in out] == [(0, 8, 8, 1)] * 2 and counting.shapes == [(4, 8, 8, 2)]
    with pytest.raises(ValueError, match="differ"):
        list(predict_stream(counting, _items([2]) + _items([2], channels=3), 4))
    # predict_samples is the one-item stream
    (_, samples), = _items([6])
    np.testing.assert_allclose(predict_samples(tiny_model, samples, 4), tiny_model.predict_on_batch(samples),
                               atol=1e-6)


def test_predict_stream_yields_each_item_as_soon_as_it_is_complete(tiny_model):
    fed = []

    def items():
        for key, samples in _items([3, 5, 2]):
            fed.append(key)
            yield key, samples

    seen = []
    for key, _ in predict_stream(tiny_model, items(), 4):
        seen.append((key, list(fed)))
    # item0 (3 rows) completes with the first full batch, once item1 was fed; item1 (rows 3-7) with the
    # second, before item2 is read; item2 with the padded last batch
    assert seen == [("item0", ["item0", "item1"]), ("item1", ["item0", "item1"]),
                    ("item2", ["item0", "item1", "item2"])]


# ------------------------------------------------------------- predict_cases
DEPTHS = (5, 11, 1)


def _old_predict_samples(model, samples, batch_size):
    """The pre-stream predict_samples: each stack padded on its own."""
    n, out = samples.shape[0], []
    for start in range(0, n, batch_size):
        chunk = samples[start:start + batch_size]
        k = chunk.shape[0]
        if k < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - k, *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(model.predict_on_batch(chunk), np.float32)[:k])
    return np.concatenate(out)


def _old_predict_cases(model, cases, trained, post, pred_dir, batch_size, save_probabilities, log):
    """The sequential loop predict_cases replaced (one case at a time, one thread)."""
    from clotseg.evaluation.uncertainty import case_uncertainty, uncertainty_map
    from clotseg.intensity import center_crop
    from clotseg.vessels import cta_volume, vessel_mask

    pred_dir.mkdir(parents=True, exist_ok=True)
    windows = [trained.windows_hu[m] for m in trained.modalities]
    hw = trained.input_shape[:2]
    n_slices, exports, problems = 0, {}, []
    for case in cases:
        vols = [load_npy(p) for p in case.volumes.values()]
        n_slices += vols[0].shape[2]
        gaps = case.slice_gaps()
        inputs = member_inputs(vols, windows, hw, True, trained.context_slices, trained.symmetry_channels, gaps)
        probs = [_old_predict_samples(model, x, batch_size) for x in inputs]
        probs = [probs[0], np.flip(probs[1], axis=1), np.flip(probs[2], axis=2)]
        members = [np.ascontiguousarray(center_crop(np.moveaxis(p, 0, 2), vols[0].shape[:2])) for p in probs]
        prob = np.mean(members, axis=0, dtype=np.float32) if post.tta_flips else members[0]
        vessel = vessel_mask(vols, trained.modalities) if post.max_vessel_distance_mm > 0 else None
        cta = cta_volume(vols, trained.modalities) if post.max_component_cta_hu > 0 else None
        pred = postprocess(to_mask(prob, post.threshold), post.min_component_voxels, post.keep_largest_component,
                           slice_gaps=gaps or None, prob=prob, min_peak=post.min_component_peak,
                           vessel=vessel, spacing_mm=case.spacing_mm(None), max_vessel_mm=post.max_vessel_distance_mm,
                           cta=cta, max_cta_hu=post.max_component_cta_hu)
        cid = case.case_id
        atomic_save_npy(pred_dir / f"{cid}_pred.npy", pred)
        prob_fg = None
        if save_probabilities:
            atomic_save_npy(pred_dir / f"{cid}_prob.npy",
                            (prob[..., 0] if prob.shape[-1] == 1 else prob).astype(np.float16))
            prob_fg = evaluate._foreground([prob])[0]
        fg = evaluate._foreground(members)
        umap = uncertainty_map(fg, "std")
        atomic_save_npy(pred_dir / f"{cid}_unc.npy", umap.astype(np.float16))
        score = case_uncertainty(fg, threshold=post.threshold, method="std", unc_map=umap)
        atomic_write_json(pred_dir / f"{cid}_unc.json", {"case_id": cid, **score,
                                                         "members": list(evaluate.FLIP_MEMBERS),
                                                         "threshold": post.threshold})
        written, bad = evaluate._export(case, pred, prob_fg, pred_dir, trained.num_classes, "clot", log)
        if written:
            exports[cid] = written
        problems += bad
    return {"n_slices": n_slices, "exports": exports, "export_problems": problems}


def _fake_export(case, pred, prob_fg, pred_dir, num_classes, target, log):
    """Stands in for the NIfTI/DICOM export: a file, a problem and a log line per
    case, and uneven delays so the writer threads finish out of case order."""
    time.sleep(0.05 if case.case_id == "CS1" else 0.0)
    name = f"{case.case_id}_export.txt"
    fg = "-" if prob_fg is None else f"{float(prob_fg.sum()):.4f}"
    (pred_dir / name).write_text(f"{int(pred.sum())} {fg}")
    log(f"warning: case {case.case_id}: exported")
    return ([name] if case.case_id != "CS2" else []), [f"case {case.case_id}: problem"]


def _cohort(tmp_path, classes=1, context=0):
    settings = tiny_settings(tmp_path, input_shape=(16, 16, 2), context_slices=context, num_classes=classes)
    for cid, depth in enumerate(DEPTHS, start=1):
        write_case(settings, cid, shape=(12, 10, depth), seed=cid)
    (settings.volume_path / "CS2.json").write_text(json.dumps({"slice_gaps": [4]}))   # 2.5D stops at the gap
    cases = discover_cases(settings, require_masks=False, warn=quiet)
    assert [c.case_id for c in cases] == ["CS1", "CS2", "CS3"]
    model = _tiny_model(settings.model_channels, classes, hw=(16, 16), seed=classes)
    return settings, cases, model


@pytest.mark.parametrize("classes, context, tta, save, lumen", [(1, 1, True, True, 130.0), (1, 0, False, False, 0.0),
                                                                 (3, 0, False, False, 0.0)])
def test_predict_cases_writes_what_the_sequential_loop_wrote(tmp_path, monkeypatch, classes, context, tta, save,
                                                             lumen):
    monkeypatch.setattr(evaluate, "_export", _fake_export)
    settings, cases, model = _cohort(tmp_path, classes, context)
    post = PostProcessing(threshold=0.5, tta_flips=tta, min_component_voxels=2, min_component_peak=0.6,
                          max_vessel_distance_mm=2.0, max_component_cta_hu=lumen)
    old_log, new_log = [], []
    old = _old_predict_cases(model, cases, settings, post, tmp_path / "old", 4, save, old_log.append)
    ensembles = []   # the flip ensemble predict_cases builds, wrapped to count its batches
    flip_ensemble = evaluate.flip_ensemble
    monkeypatch.setattr(evaluate, "flip_ensemble", lambda m: ensembles.append(Counting(flip_ensemble(m))) or ensembles[-1])
    new = evaluate.predict_cases(model, cases, settings, post, tmp_path / "new", batch_size=4,
                                 save_probabilities=save, log=new_log.append, workers=3)
    assert {k: new[k] for k in old} == old and new["batch_size"] == 4
    assert new_log == old_log                      # replayed in case order
    # one stream for the cohort, the flips made by the ensemble: 17 slices in ceil(17 / 4) full batches
    assert len(ensembles) == 1
    assert ensembles[0].shapes == [(4, 16, 16, settings.model_channels)] * 5
    old_files = sorted(p.name for p in (tmp_path / "old").iterdir())
    assert old_files == sorted(p.name for p in (tmp_path / "new").iterdir())
    assert len(old_files) == 3 * (5 if save else 4)
    for name in old_files:
        assert (tmp_path / "old" / name).read_bytes() == (tmp_path / "new" / name).read_bytes(), name


def test_predict_cases_agrees_with_predict_volume_members(tmp_path, monkeypatch):
    """The stream's members are predict_volume_members' (train.py's tuning uses those)."""
    monkeypatch.setattr(evaluate, "_export", _fake_export)
    settings, cases, model = _cohort(tmp_path, context=1)
    post = PostProcessing(tta_flips=True)
    evaluate.predict_cases(model, cases, settings, post, tmp_path / "new", batch_size=4, save_probabilities=True,
                           log=quiet)
    windows = [settings.windows_hu[m] for m in settings.modalities]
    for case in cases:
        vols = [np.load(p) for p in case.volumes.values()]
        members = predict_volume_members(model, vols, windows, (16, 16), batch_size=4, tta_flips=True,
                                         context_slices=1, slice_gaps=case.slice_gaps())
        want = np.mean(members, axis=0, dtype=np.float32)[..., 0].astype(np.float16)
        np.testing.assert_allclose(np.load(tmp_path / "new" / f"{case.case_id}_prob.npy").astype(np.float32),
                                   want.astype(np.float32), atol=2e-3)


def test_predict_cases_raises_worker_and_loader_errors(tmp_path, monkeypatch):
    settings, cases, model = _cohort(tmp_path)

    def failing_export(case, *args):
        if case.case_id == "CS2":
            raise RuntimeError("disk full while writing CS2")
        return [], []

    monkeypatch.setattr(evaluate, "_export", failing_export)
    with pytest.raises(RuntimeError, match="CS2"):
        evaluate.predict_cases(model, cases, settings, PostProcessing(), tmp_path / "a", batch_size=4, log=quiet)
    assert _wait_for_no_prefetch_threads()

    monkeypatch.setattr(evaluate, "_export", lambda *a: ([], []))
    (settings.volume_path / "CS3_CTA_Binary.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(InputDataError, match="CS3"):
        evaluate.predict_cases(model, cases, settings, PostProcessing(), tmp_path / "b", batch_size=4, log=quiet)
    assert _wait_for_no_prefetch_threads()
    assert (tmp_path / "b" / "CS1_pred.npy").is_file()   # the cases before the bad one were written


# ------------------------------------------------------------- device-side flips
def test_flip_ensemble_members_are_the_host_flipped_predictions_flipped_back(tiny_model):
    """(B, H, W, C) -> (B, H, W, 3K): plain, then the h- and v-flipped inputs'
    predictions un-flipped: what member_inputs(tta_flips) + member_outputs give."""
    from clotseg.inference import flip_ensemble, split_members

    x = _items([6], seed=3)[0][1]
    plain, rows, cols = split_members(np.asarray(flip_ensemble(tiny_model).predict_on_batch(x)), 3)
    want = [tiny_model.predict_on_batch(x),
            np.flip(tiny_model.predict_on_batch(np.ascontiguousarray(np.flip(x, 1))), 1),
            np.flip(tiny_model.predict_on_batch(np.ascontiguousarray(np.flip(x, 2))), 2)]
    for got, expected in zip((plain, rows, cols), want):
        np.testing.assert_allclose(got, np.asarray(expected), atol=1e-6)
    assert not np.allclose(plain, rows, atol=1e-3)    # the model is not flip-invariant: the test can fail


def test_flip_ensemble_takes_a_deep_supervision_models_full_size_output():
    import keras

    from clotseg.inference import flip_ensemble

    inp = keras.Input((8, 8, 2))
    full = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inp)
    coarse = keras.layers.AveragePooling2D(2)(full)
    model = keras.Model(inp, [full, coarse])
    x = _items([2], seed=4)[0][1]
    out = np.asarray(flip_ensemble(model).predict_on_batch(x))
    assert out.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(out[..., :1], np.asarray(model.predict_on_batch(x)[0]), atol=1e-6)


@pytest.mark.parametrize("gaps", [None, [3]])
def test_postprocess_in_the_box_around_the_prediction_equals_the_whole_volume(gaps):
    from clotseg.inference import _filter_components

    rng = np.random.default_rng(5)
    mask = np.zeros((40, 30, 8), np.uint8)
    mask[5:25, 8:20] = (rng.random((20, 12, 8)) > 0.7) * rng.integers(1, 3, (20, 12, 8))   # two labels, many blobs
    for min_voxels, largest in [(3, False), (0, True), (5, True)]:
        got = postprocess(mask, min_voxels, largest, slice_gaps=gaps)
        want = _filter_components(mask, min_voxels, largest, gaps)
        assert got.dtype == np.uint8 and np.array_equal(got, want)
        assert 0 < int((got > 0).sum()) < int((mask > 0).sum())
    assert not postprocess(np.zeros((4, 4, 2), np.uint8), 2).any()


def test_predict_cases_takes_a_ready_ensemble_instead_of_building_one(tmp_path, monkeypatch):
    """bench/benchmark.py's host-side measurement passes a stand-in for the
    three-member model: its probabilities are what gets post-processed."""
    monkeypatch.setattr(evaluate, "_export", _fake_export)
    settings, cases, _ = _cohort(tmp_path)

    class Blob:
        calls = 0

        def predict_on_batch(self, x):
            Blob.calls += 1
            probs = np.zeros((*x.shape[:3], 3), np.float32)
            probs[:, 7:9, 6:9] = 0.9          # in the 16x16 frame: rows 5-6, cols 3-5 of a 12x10 case
            return probs

    evaluate.predict_cases(None, cases, settings, PostProcessing(tta_flips=True), tmp_path / "out", batch_size=4,
                           log=quiet, ensemble=Blob())
    assert Blob.calls == 5                                   # 17 slices, batches of 4
    pred = np.load(tmp_path / "out" / "CS1_pred.npy")
    assert pred.shape == (12, 10, 5) and pred[5:7, 3:6].all() and pred.sum() == 2 * 3 * 5
