"""The two label-transfer variants of the knn-seg task: `released` (softmax over all
memory patches, raw features) and `topk` (cosine top-k with a temperature, Hummingbird).

The top-k transfer is checked against a brute-force numpy implementation; the task runs
through the public API on `synthetic-scenes` with the `rgb` encoder, where `topk` must
beat predicting background everywhere (scored here by hand from the ground-truth masks)
and `released` must keep the numbers it gave before `topk` existed.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

# rgb on synthetic-scenes (size 128, train 256, val 128, seed 0), 256 memory images:
# the released attention's numbers, recorded before the topk variant was added
RELEASED = {"pixel_acc": 73.0224609375, "fg_acc": 0.0, "miou": 10.431780133928571}

OVERLAY = """
tasks:
  knn-seg-synthetic:
    plugin: knn-seg
    params: {datasets: [synthetic-scenes], memory_images: 256, attention: topk, k: 10, temperature: 0.02}
  knn-seg-synthetic-released:
    plugin: knn-seg
    params: {datasets: [synthetic-scenes], memory_images: 256, attention: released}
"""


def brute_force_topk(queries: np.ndarray, keys: np.ndarray, values: np.ndarray, k: int, temperature: float) -> np.ndarray:
    """Per query: the k keys of largest cosine similarity, softmax(cos / T) over them, @ values."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    m = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    out = np.zeros((len(queries), values.shape[1]))
    for i, row in enumerate(q @ m.T):
        nearest = np.argsort(-row)[: min(k, len(keys))]
        weights = np.exp((row[nearest] - row[nearest].max()) / temperature)
        out[i] = (weights / weights.sum()) @ values[nearest]
    return out


@pytest.mark.parametrize("k,temperature,query_chunk,key_chunk", [(4, 0.05, 3, 5), (3, 0.02, 100, 100), (50, 0.1, 2, 7)])
def test_topk_label_transfer_equals_brute_force(k, temperature, query_chunk, key_chunk):
    from harness_plugins.tasks._seg_attention import topk_label_transfer

    rng = np.random.default_rng(7)
    queries, keys = rng.normal(size=(9, 5)), rng.normal(size=(23, 5))
    values = np.eye(4)[rng.integers(0, 4, size=23)]
    expected = brute_force_topk(queries, keys, values, k, temperature)
    got = topk_label_transfer(
        queries, keys, values, k=k, temperature=temperature, query_chunk=query_chunk, key_chunk=key_chunk, dtype=torch.float64
    ).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    # float32 (the task's precision) agrees too
    got32 = topk_label_transfer(queries, keys, values, k=k, temperature=temperature, query_chunk=query_chunk, key_chunk=key_chunk)
    np.testing.assert_allclose(got32.numpy(), expected, atol=1e-5)


def test_topk_is_scale_free_where_released_is_not():
    from harness_plugins.tasks._seg_attention import knn_label_transfer

    rng = np.random.default_rng(1)
    queries, keys = rng.normal(size=(6, 3)), rng.normal(size=(40, 3))
    values = np.eye(3)[rng.integers(0, 3, size=40)]
    common = {"k": 5, "temperature": 0.05, "query_chunk": 4, "key_chunk": 16}
    topk = knn_label_transfer("topk", queries, keys, values, **common)
    small = knn_label_transfer("topk", 1e-3 * queries, 1e-3 * keys, values, **common)
    np.testing.assert_allclose(small.numpy(), topk.numpy(), atol=1e-5)
    # released on small features: the weights go uniform, the vote is the class frequencies
    released = knn_label_transfer("released", 1e-3 * queries, 1e-3 * keys, values, **common)
    np.testing.assert_allclose(released.numpy(), np.tile(values.mean(0), (6, 1)), atol=1e-4)
    with pytest.raises(ValueError, match="released"):
        knn_label_transfer("nearest", queries, keys, values, **common)


def test_task_parameters_are_typed():
    import harness
    from harness.kinds import ParamsError

    task = harness.get_task("knn-seg")
    assert (task.params.attention, task.params.k, task.params.temperature) == ("topk", 30, 0.02)
    assert harness.get_task("knn-seg", attention="released").params.attention == "released"
    for bad in ({"attention": "softmax"}, {"k": 0}, {"temperature": 0}):
        with pytest.raises(ParamsError, match=next(iter(bad))):
            harness.get_task("knn-seg", **bad)


def all_background_scores(registry) -> dict[str, float]:
    """Pixel accuracy, foreground accuracy and mIoU of predicting background (0) on every
    val patch, from the ground-truth masks at rgb's 8 x 8 patch grid (pixel under each
    16 x 16 cell's centre)."""
    from harness.datasets import open_dataset

    split = open_dataset("synthetic-scenes", registry.dataset("synthetic-scenes")).split("val")
    truth = []
    for index in range(len(split)):
        labels = np.asarray(split.read_labels(index))
        assert labels.shape == (128, 128)
        truth.append(labels[8::16, 8::16].reshape(-1))
    truth = np.concatenate(truth)
    background = truth == 0
    classes = np.unique(truth)  # classes in the truth or the prediction (0 is in both)
    ious = [background.mean() if c == 0 else 0.0 for c in classes]  # background: |bg| / |all|
    return {"pixel_acc": 100 * background.mean(), "fg_acc": 0.0, "miou": 100 * float(np.mean(ious))}


def test_rgb_on_synthetic_scenes_topk_beats_all_background_released_unchanged(tmp_path):
    import harness
    from harness.config.registry import active_registry

    overlay = tmp_path / "registry.yaml"
    overlay.write_text(OVERLAY)
    out = tmp_path / "out"
    harness.run(encoders=["rgb"], tasks=["knn-seg-synthetic", "knn-seg-synthetic-released"], out=out, registry=overlay)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    scores = {(r["task"], r["metric"]): r for r in records if r["status"] == "ok"}
    assert len(scores) == 6, records
    baseline = all_background_scores(active_registry())

    released = {m: scores["knn-seg-synthetic-released", m]["value"] for m in RELEASED}
    assert released == pytest.approx(RELEASED, abs=1e-9)
    assert released == pytest.approx(baseline, abs=1e-9)  # the released attention votes background everywhere
    assert scores["knn-seg-synthetic-released", "miou"]["params"]["attention"] == "released"

    topk = {m: scores["knn-seg-synthetic", m]["value"] for m in RELEASED}
    params = scores["knn-seg-synthetic", "miou"]["params"]
    assert (params["attention"], params["k"], params["temperature"]) == ("topk", 10, 0.02)
    assert params["memory_patches"] == 256 * 64 and params["queries"] == 128
    assert topk["fg_acc"] > 0
    assert topk["miou"] > baseline["miou"] + 0.2, (topk, baseline)
    assert all(math.isfinite(v) for v in topk.values())
