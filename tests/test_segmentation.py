"""Segmentation: the R^2 metric against a by-hand reference, the blocked attention, the
dataset readers on tiny COCO / VOC / ADE20k fixtures, the synthetic scenes, and the
coco-r2, knn-seg and incontext-seg tasks through the command line, checked against
direct numpy computations."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness.hookspecs import hookimpl
from harness.kinds import Encoder
from helpers import cli

SHARP = 6.0  # scale of the test encoder's colour features: sharp but finite attention

# pycocotools' mask decoding predates numpy 2's __array__(copy=...) protocol
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


# ------------------------------------------------------------- a test encoder plugin
class SharpRGB(Encoder):
    """Patch features = SHARP x the mean colour (0..1) of each 16 x 16 cell."""

    supports_patches = True

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(2, 3)) / 255.0

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        n, c, h, w = x.shape
        cells = x.reshape(n, c, h // 16, 16, w // 16, 16).mean(dim=(3, 5))
        return SHARP * cells.permute(0, 2, 3, 1).contiguous()


@hookimpl
def register_encoders(register: Any) -> None:
    register("sharp-rgb", SharpRGB)


def sharp_features(image_hwc: np.ndarray) -> np.ndarray:
    h, w, _ = image_hwc.shape
    return SHARP * (image_hwc.astype(np.float64) / 255.0).reshape(h // 16, 16, w // 16, 16, 3).mean(axis=(1, 3))


def rgb_features(image_hwc: np.ndarray) -> np.ndarray:
    return sharp_features(image_hwc) / SHARP


# ------------------------------------------------------------------ numpy references
def bilinear_up(x: np.ndarray, size: int) -> np.ndarray:
    """[h, w, d] -> [size, size, d], half-pixel centres, edges clamped (upsampling)."""
    h, w = x.shape[:2]

    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(size) + 0.5) * n / size - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n - 1), src - i0

    y0, y1, ly = axis(h)
    x0, x1, lx = axis(w)
    rows = x[y0] * (1 - ly)[:, None, None] + x[y1] * ly[:, None, None]
    return rows[:, x0] * (1 - lx)[None, :, None] + rows[:, x1] * lx[None, :, None]


def reference_inertia(features: np.ndarray, labels: np.ndarray, mean: str, size: int = 112) -> float:
    from sklearn.decomposition import PCA

    tokens = bilinear_up(features, size).reshape(-1, features.shape[-1])
    projected = PCA(n_components=3, svd_solver="full").fit_transform(tokens)
    projected = (projected - projected.min(0)) / (projected.max(0) - projected.min(0))
    height, width = labels.shape
    grid = labels[np.arange(size) * height // size][:, np.arange(size) * width // size].reshape(-1)
    points, grid = projected[grid != 0], grid[grid != 0]
    if len(points) == 0:
        return math.nan
    within = sum(((points[grid == k] - points[grid == k].mean(0)) ** 2).sum() for k in np.unique(grid))
    centre = points.mean() if mean == "scalar" else points.mean(0)
    return within / ((points - centre) ** 2).sum()


def softmax_rows(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(axis=1, keepdims=True)
    weights = np.exp(scores)
    return weights / weights.sum(axis=1, keepdims=True)


def pil_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL's NEAREST resize of a label map to (height, width)."""
    from PIL import Image

    return np.asarray(Image.fromarray(labels.astype(np.uint8)).resize((size[1], size[0]), Image.NEAREST)).astype(np.int64)


def centre_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The source pixel under each output pixel's centre; a centre exactly on a source
    pixel border takes the later pixel (PIL's float arithmetic can round it down)."""
    rows = np.floor((np.arange(size[0]) + 0.5) * labels.shape[0] / size[0] + 1e-9).astype(int)
    cols = np.floor((np.arange(size[1]) + 0.5) * labels.shape[1] / size[1] + 1e-9).astype(int)
    return labels[rows][:, cols].astype(np.int64)


# -------------------------------------------------------------------------- metric
@pytest.mark.parametrize("shape", [(3, 7, 5, 10), (2, 28, 28, 24), (1, 48, 48, 6)])
@pytest.mark.parametrize("mean", ["scalar", "per_component"])
def test_segmentation_r2_equals_reference(shape, mean):
    from harness.metrics import segmentation_r2

    rng = np.random.default_rng(sum(shape))
    features = rng.normal(size=shape) + 3 * rng.normal(size=(shape[0], 1, 1, shape[3]))
    labels = rng.integers(0, 5, size=(shape[0], 60, 45))
    labels[:, :20] = rng.integers(1, 3)  # a large segment, as real label maps have
    r2, inertia = segmentation_r2(features, labels, mean=mean, return_inertia=True)
    expected = np.array([reference_inertia(f, l, mean) for f, l in zip(features, labels)])
    np.testing.assert_allclose(inertia, expected, rtol=1e-9, atol=1e-12)
    assert r2 == pytest.approx(1 - expected.mean(), rel=1e-9)


def test_segmentation_r2_variants_inputs_and_nan_images():
    from harness.metrics import feature_pca, segmentation_inertia, segmentation_r2

    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 8, 8, 16)).astype(np.float32)
    labels = rng.integers(0, 4, size=(3, 112, 112))
    labels[1] = 0  # no labelled pixel: NaN, skipped
    both = segmentation_inertia(features, labels, mean=("scalar", "per_component"))
    assert both.shape == (3, 2) and np.isnan(both[1]).all()
    # the scalar-mean total is never smaller, so its R^2 is never lower
    assert (both[[0, 2], 0] <= both[[0, 2], 1] + 1e-12).all()
    r2 = segmentation_r2(features, labels)
    assert r2 == pytest.approx(1 - np.mean(both[[0, 2], 0]))
    assert segmentation_r2(torch.from_numpy(features), torch.from_numpy(labels)) == pytest.approx(r2)
    assert segmentation_r2(list(features), list(labels)) == pytest.approx(r2)
    assert segmentation_r2(features[0], labels[0]) == pytest.approx(1 - both[0, 0])
    assert math.isnan(segmentation_r2(features[1], labels[1]))
    # constant features explain nothing: NaN; rank-1 features use their one axis
    assert math.isnan(segmentation_r2(np.ones((4, 4, 5)), labels[0]))
    grey = np.repeat(rng.random((6, 6, 1)), 3, axis=2)
    assert 0.0 <= segmentation_r2(grey, labels[0]) <= 1.0
    maps = feature_pca(features)
    assert maps.shape == (3, 112, 112, 3) and maps.min() == 0.0 and maps.max() == 1.0
    # features that are the labels themselves (at full resolution): R^2 = 1
    perfect = np.eye(4)[labels[0]]
    assert segmentation_r2(perfect, labels[0], mean="per_component") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        segmentation_r2(features, labels, mean="median")


# ----------------------------------------------------------------------- attention
def test_attention_transfer_equals_direct_softmax():
    from harness_plugins.tasks._seg_ops import attention_transfer

    rng = np.random.default_rng(3)
    queries, keys = rng.normal(size=(37, 8)) * 3, rng.normal(size=(101, 8)) * 3
    values = np.eye(5)[rng.integers(0, 5, size=101)]
    expected = softmax_rows(queries @ keys.T / math.sqrt(8)) @ values
    got = attention_transfer(queries, keys, values, math.sqrt(8), query_chunk=10, key_chunk=16, dtype=torch.float64)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    got32 = attention_transfer(queries, keys, values, math.sqrt(8), query_chunk=64, key_chunk=7)
    np.testing.assert_allclose(got32.numpy(), expected, atol=1e-5)


def test_segmentation_scores_by_hand():
    from harness_plugins.tasks._seg_ops import binary_ious, confusion_matrix, segmentation_scores

    truth = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    pred = np.array([0, 1, 1, 1, 2, 0, 2, 0])
    scores = segmentation_scores(confusion_matrix(truth, pred, 4))
    assert scores["pixel_acc"] == pytest.approx(100 * 6 / 8)
    assert scores["fg_acc"] == pytest.approx(100 * 4 / 5)
    # IoU: class 0 2/4, class 1 2/3, class 2 2/3; class 3 absent
    assert scores["miou"] == pytest.approx(100 * (0.5 + 2 / 3 + 2 / 3) / 3)
    iou, soft = binary_ious(np.array([0.9, 0.6, 0.2, 0.0]), np.array([1, 0, 1, 0]))
    assert iou == pytest.approx(1 / 3)
    assert soft == pytest.approx((0.9 + 0.2) / (1.0 + 0.6 + 1.0 + 0.0))


def test_label_resizing_matches_pil_and_opencv_rules():
    from harness.datasets.segmentation import resize_labels

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 200, size=(37, 53))
    for size in [(28, 28), (4, 6), (112, 112), (50, 70)]:  # no centre falls on a source border here
        np.testing.assert_array_equal(resize_labels(labels, size, "nearest-exact"), pil_nearest(labels, size))
        rows, cols = np.arange(size[0]) * 37 // size[0], np.arange(size[1]) * 53 // size[1]
        np.testing.assert_array_equal(resize_labels(labels, size, "nearest"), labels[rows][:, cols])
    square = rng.integers(0, 200, size=(64, 64))
    for size in [(112, 112), (28, 28), (96, 40)]:  # 64 -> 112 puts centres on borders
        np.testing.assert_array_equal(resize_labels(square, size, "nearest-exact"), centre_nearest(square, size))


# ------------------------------------------------------------------ synthetic scenes
def independent_shape(obj: Any, size: int) -> np.ndarray:
    """The object's pixels from its parameters, written out again here."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = xs - obj.cx, ys - obj.cy
    u = dx * np.cos(obj.angle) + dy * np.sin(obj.angle)
    v = -dx * np.sin(obj.angle) + dy * np.cos(obj.angle)
    r = obj.radius
    if obj.shape == "disk":
        return dx**2 + dy**2 <= r**2
    if obj.shape == "ring":
        return (dx**2 + dy**2 <= r**2) & (dx**2 + dy**2 >= (0.55 * r) ** 2)
    if obj.shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= r / np.sqrt(2)
    if obj.shape == "ellipse":
        return (u / r) ** 2 + (v / (r * obj.aspect)) ** 2 <= 1
    if obj.shape == "cross":
        return (np.abs(u) <= r) & (np.abs(v) <= 0.35 * r) | (np.abs(v) <= r) & (np.abs(u) <= 0.35 * r)
    if obj.shape == "triangle":  # the same side of each edge as the centre
        corners = [(obj.cx + r * np.cos(obj.angle + 2 * np.pi * k / 3), obj.cy + r * np.sin(obj.angle + 2 * np.pi * k / 3)) for k in range(3)]
        inside = np.ones((size, size), dtype=bool)
        for k in range(3):
            (ax, ay), (bx, by) = corners[k], corners[(k + 1) % 3]
            side = (bx - ax) * (ys - ay) - (by - ay) * (xs - ax)
            centre = (bx - ax) * (obj.cy - ay) - (by - ay) * (obj.cx - ax)
            inside &= side * np.sign(centre) >= -1e-9
        return inside
    raise AssertionError(obj.shape)


def test_synthetic_scene_masks_are_exact():
    from harness.datasets.synthetic_scenes import CLASSES, compose_scene

    shapes_seen = set()
    for index in range(12):
        scene = compose_scene([0, 1, index], size=96)
        again = compose_scene([0, 1, index], size=96)
        assert np.array_equal(scene.image, again.image) and np.array_equal(scene.labels, again.labels)
        labels = np.zeros((96, 96), dtype=np.int64)
        instances = np.zeros((96, 96), dtype=np.int64)
        for k, obj in enumerate(scene.objects):
            assert CLASSES[obj.label][1:] == (obj.shape, obj.texture)
            inside = independent_shape(obj, 96)
            labels[inside] = obj.label
            instances[inside] = k + 1
            shapes_seen.add(obj.shape)
        mismatched = labels != scene.labels
        assert mismatched.sum() == 0, f"scene {index}: {mismatched.sum()} pixels differ"
        assert np.array_equal(instances, scene.instances)
        for k, obj in enumerate(scene.objects):  # every visible pixel of an object is one of its two colours
            pixels = scene.image[scene.instances == k + 1]
            allowed = np.array(obj.colours, dtype=np.uint8)
            assert ((pixels[:, None, :] == allowed[None]).all(axis=2).any(axis=1)).all()
    assert len(shapes_seen) >= 4
    assert not np.array_equal(compose_scene([0, 1, 0], size=96).image, compose_scene([0, 1, 1], size=96).image)


# ------------------------------------------------------------------------- fixtures
VOC_PALETTE = [0, 0, 0] + [v for i in range(1, 256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)]
CLASS_COLOURS = {0: (120, 120, 120), 1: (220, 30, 30), 7: (30, 200, 40), 12: (40, 60, 220), 15: (230, 220, 40), 18: (200, 40, 200)}


def paint(rng: np.random.Generator, classes: list[int], size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An image of coloured rectangles (colour by class, with noise) and its label map."""
    labels = np.zeros((size, size), dtype=np.int64)
    for cls in classes:
        h, w = rng.integers(20, 40, size=2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        labels[y : y + h, x : x + w] = cls
    image = np.array([CLASS_COLOURS[c] for c in labels.reshape(-1)], dtype=np.float64).reshape(size, size, 3)
    image = np.clip(image + rng.normal(0, 12, size=image.shape), 0, 255).astype(np.uint8)
    return image, labels


def save_jpeg(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def decode(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def make_voc(root: Path) -> dict[str, list[str]]:
    from PIL import Image

    base = root / "VOCdevkit" / "VOC2012"
    (base / "SegmentationClass").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(7)
    ids = {"train": [f"2007_{i:06d}" for i in range(6)], "val": [f"2008_{i:06d}" for i in range(3)]}
    for split, names in ids.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for k, name in enumerate(names):
            image, labels = paint(rng, [[1, 15], [7], [15, 1]][k % 3])
            labels[::9, :] = np.where(labels[::9, :] > 0, 255, 0)  # object boundaries, as VOC marks them
            save_jpeg(base / "JPEGImages" / f"{name}.jpg", image)
            mask = Image.fromarray(labels.astype(np.uint8), mode="P")
            mask.putpalette(VOC_PALETTE)
            mask.save(base / "SegmentationClass" / f"{name}.png")
    return ids


def make_ade(root: Path) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(11)
    names = [f"ADE_val_{i:08d}" for i in range(1, 6)]
    for k, name in enumerate(names):
        image, labels = paint(rng, [[7, 12], [12], [7, 12], [18], [7]][k])
        save_jpeg(root / "images" / "validation" / f"{name}.jpg", image)
        (root / "annotations" / "validation").mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels.astype(np.uint8), mode="L").save(root / "annotations" / "validation" / f"{name}.png")
    return names


def make_coco(root: Path) -> dict:
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(5)
    images, annotations = [], []
    for k in range(3):
        image, _ = paint(rng, [1, 7])
        save_jpeg(root / "val2017" / f"{k + 1:012d}.jpg", image)
        images.append({"id": 100 + k, "file_name": f"{k + 1:012d}.jpg", "height": 64, "width": 64})

    def box(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    annotations.append({"id": 1, "image_id": 100, "category_id": 1, "segmentation": box(4, 4, 40, 40), "iscrowd": 0, "area": 1296, "bbox": [4, 4, 36, 36]})
    annotations.append({"id": 2, "image_id": 100, "category_id": 18, "segmentation": box(24, 24, 60, 60), "iscrowd": 0, "area": 1296, "bbox": [24, 24, 36, 36]})
    disk = ((np.mgrid[0:64, 0:64] - 32) ** 2).sum(0) <= 15**2
    rle = mask_utils.encode(np.asfortranarray(disk.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    annotations.append({"id": 3, "image_id": 101, "category_id": 3, "segmentation": rle, "iscrowd": 1, "area": int(disk.sum()), "bbox": [17, 17, 30, 30]})
    annotations.append({"id": 4, "image_id": 101, "category_id": 1, "segmentation": box(2, 40, 30, 62), "iscrowd": 0, "area": 616, "bbox": [2, 40, 28, 22]})
    # image 102 has no annotation: all background, its R^2 is undefined and skipped
    document = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(document))
    return document


REGISTRY = """
plugins: [test_segmentation]
datasets:
  coco: {{format: coco, root: {coco}, options: {{image_size: 64}}}}
  coco-missing: {{format: coco, root: {missing}, env: HARNESS_TEST_COCO_MISSING}}
  voc2012: {{format: voc, root: {voc}, options: {{image_size: 64}}}}
  ade20k: {{format: ade20k, root: {ade}, options: {{image_size: 64}}}}
  synthetic-scenes: {{format: synthetic-scenes, options: {{size: 64, train: 10, val: 6}}}}
encoders:
  sharp-rgb: {{plugin: sharp-rgb}}
tasks:
  coco-r2: {{plugin: coco-r2, params: {{datasets: [coco, coco-missing], photographs: [coffee]}}}}
  knn-seg: {{plugin: knn-seg, params: {{datasets: [voc2012], memory_images: 4, attention: released}}}}
  incontext-seg: {{plugin: incontext-seg, params: {{datasets: [ade20k], pairs: 6}}}}
  coco-r2-synthetic: {{plugin: coco-r2, params: {{datasets: [synthetic-scenes], n_images: 6, photographs: []}}}}
  knn-seg-synthetic: {{plugin: knn-seg, params: {{datasets: [synthetic-scenes], memory_images: 6}}}}
  incontext-seg-synthetic: {{plugin: incontext-seg, params: {{datasets: [synthetic-scenes], pairs: 4}}}}
"""
TASKS = "coco-r2,knn-seg,incontext-seg,coco-r2-synthetic,knn-seg-synthetic,incontext-seg-synthetic"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    pytest.importorskip("pycocotools")
    base = tmp_path_factory.mktemp("segmentation")
    roots = {"coco": base / "coco", "voc": base / "voc", "ade": base / "ade", "missing": base / "nonexistent-coco"}
    info = {"coco": make_coco(roots["coco"]), "voc": make_voc(roots["voc"]), "ade": make_ade(roots["ade"])}
    registry = base / "registry.yaml"
    registry.write_text(REGISTRY.format(**{k: v.as_posix() for k, v in roots.items()}))
    out = base / "out"
    result = cli("--registry", str(registry), "run", "--encoders", "rgb,random-init,sharp-rgb", "--tasks", TASKS, "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {"out": out, "records": records, "roots": roots, "info": info, "registry": registry}


def value(records: list[dict], task: str, encoder: str, metric: str, dataset: str | None = None, **params: Any) -> dict:
    rows = [
        r for r in records
        if r["task"] == task and r["encoder"] == encoder and r["metric"] == metric
        and (dataset is None or r["dataset"] == dataset) and all(r["params"].get(k) == v for k, v in params.items())
    ]
    assert len(rows) == 1, (task, encoder, metric, rows)
    return rows[0]


def test_every_cell_ran_and_missing_data_is_skipped(run):
    records = run["records"]
    for row in records:
        if row["dataset"] == "coco-missing":
            assert row["status"] == "skipped"
            assert "datasets.coco-missing.root" in row["message"] and "HARNESS_TEST_COCO_MISSING" in row["message"]
        else:
            assert row["status"] == "ok", row["message"]
            assert row["value"] is None or np.isnan(row["value"]) or -1e-9 <= row["value"] <= 100 + 1e-9
    for task in TASKS.split(","):
        for encoder in ("rgb", "random-init"):
            assert any(r["task"] == task and r["encoder"] == encoder and r["status"] == "ok" and r["headline"] for r in records)
    assert {r["metric"] for r in records if r["task"] == "knn-seg-synthetic"} == {"pixel_acc", "fg_acc", "miou"}
    assert {r["metric"] for r in records if r["task"] == "incontext-seg-synthetic"} == {"iou50", "soft_iou"}


def test_coco_reader_overwrites_in_annotation_order(run):
    import harness
    from harness.datasets import open_dataset

    registry = harness.config.registry.use_registry(run["registry"])
    data = open_dataset("coco", registry.dataset("coco"))
    split = data.split("val")
    assert len(split) == 3 and data.classes[18] == "dog"
    labels = split.read_labels(0)
    assert (labels[10:20, 10:20] == 1).all()  # first box only
    assert (labels[30:38, 30:38] == 18).all()  # overlap: the later annotation wins
    assert (labels[50:58, 50:58] == 18).all() and (labels[0:3, :] == 0).all()
    crowd = split.read_labels(1)
    assert (crowd[28:36, 28:36] == 3).all() and (crowd[50:58, 5:25] == 1).all()
    assert (split.read_labels(2) == 0).all()


def test_coco_r2_equals_the_metric_on_pycocotools_masks(run):
    from pycocotools.coco import COCO

    import harness
    from harness.metrics import segmentation_r2

    harness.config.registry.use_registry(run["registry"])
    coco = COCO(str(run["roots"]["coco"] / "annotations" / "instances_val2017.json"))
    images, labels = [], []
    for image_id in coco.getImgIds():
        label = np.zeros((64, 64), dtype=np.int64)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            label[coco.annToMask(ann) == 1] = ann["category_id"]
        images.append(decode(run["roots"]["coco"] / "val2017" / coco.imgs[image_id]["file_name"]).transpose(2, 0, 1))
        labels.append(label)
    # the encoder's own (float32) features: the rgb row's PCA axes are badly conditioned
    features = harness.get_encoder("rgb").embed_patches(torch.from_numpy(np.stack(images)))
    np.testing.assert_allclose(features.numpy(), np.stack([rgb_features(i.transpose(1, 2, 0)) for i in images]), atol=1e-5)
    for mean in ("scalar", "per_component"):
        row = value(run["records"], "coco-r2", "rgb", "r2", "coco", mean=mean)
        assert row["value"] == pytest.approx(100 * segmentation_r2(features, np.stack(labels), mean=mean), rel=1e-9)
        assert row["n"] == 2 and row["params"]["nan_images"] == 1 and row["headline"] == (mean == "scalar")


def test_coco_leaderboard_shows_paper_numbers_and_pca_figure(run):
    out = run["out"]
    board = (out / "LEADERBOARD.md").read_text()
    section = board[board.index("## coco-r2:") :].split("\n## ")[0]
    header = next(line for line in section.splitlines() if line.startswith("| group"))
    assert [c.strip() for c in header.split("|")[3:5]] == ["coco", "paper"]
    random_row = next(line for line in section.splitlines() if "| random-init" in line)
    assert float(random_row.split("|")[4]) == pytest.approx(36.7)  # the paper's "Random init." row
    assert "figures/coco-r2_coco_pca.png" in section
    assert (out / "figures" / "coco-r2_coco_pca.png").stat().st_size > 1000
    parts = out / "figures" / "pca" / "coco-r2" / "coco"
    for encoder in ("rgb", "random-init", "sharp-rgb"):
        assert (parts / encoder / "coffee.png").is_file() and (parts / encoder / "coco-0.png").is_file()
    assert (out / "figures" / "coco-r2-synthetic_synthetic-scenes_pca.png").is_file()


def test_knn_seg_equals_direct_numpy_attention(run):
    from PIL import Image

    base = run["roots"]["voc"] / "VOCdevkit" / "VOC2012"
    ids = run["info"]["voc"]

    def load(name: str) -> tuple[np.ndarray, np.ndarray]:
        feats = sharp_features(decode(base / "JPEGImages" / f"{name}.jpg")).reshape(-1, 3)
        with Image.open(base / "SegmentationClass" / f"{name}.png") as mask:
            labels = np.asarray(mask.resize((4, 4), Image.NEAREST)).astype(np.int64).reshape(-1)
        labels[labels == 255] = 0
        return feats, labels

    memory = np.sort(np.random.default_rng(0).choice(6, size=4, replace=False))
    keys, values = zip(*[load(ids["train"][i]) for i in memory])
    keys, values = np.concatenate(keys), np.eye(21)[np.concatenate(values)]
    truth, predicted = [], []
    for name in ids["val"]:
        feats, labels = load(name)
        predicted.append((softmax_rows(feats @ keys.T / np.sqrt(3)) @ values).argmax(1))
        truth.append(labels)
    truth, predicted = np.concatenate(truth), np.concatenate(predicted)
    classes = [c for c in range(21) if ((truth == c) | (predicted == c)).any()]
    ious = [((truth == c) & (predicted == c)).sum() / ((truth == c) | (predicted == c)).sum() for c in classes]
    expected = {
        "pixel_acc": 100 * (truth == predicted).mean(),
        "fg_acc": 100 * (truth == predicted)[truth != 0].mean(),
        "miou": 100 * np.mean(ious),
    }
    for metric, number in expected.items():
        row = value(run["records"], "knn-seg", "sharp-rgb", metric)
        assert row["value"] == pytest.approx(number, rel=1e-9, abs=1e-9), metric
        assert row["params"]["memory_images"] == 4 and row["params"]["memory_patches"] == 64
    assert expected["fg_acc"] > 0  # the fixture is separable: not a majority vote


def test_incontext_seg_equals_direct_numpy_attention(run):
    from PIL import Image

    import harness
    from harness.datasets import open_dataset
    from harness_plugins.tasks.segmentation import draw_pairs

    registry = harness.config.registry.use_registry(run["registry"])
    split = open_dataset("ade20k", registry.dataset("ade20k")).split("val")
    pairs = draw_pairs(split, 6, 0, 0.05, (0,))
    assert pairs == draw_pairs(split, 6, 0, 0.05, (0,))
    root = run["roots"]["ade"]
    names = run["info"]["ade"]

    def load(index: int) -> tuple[np.ndarray, np.ndarray]:
        image = decode(root / "images" / "validation" / f"{names[index]}.jpg")
        with Image.open(root / "annotations" / "validation" / f"{names[index]}.png") as mask:
            return sharp_features(image), np.asarray(mask).astype(np.int64)

    ious, soft_ious = [], []
    for cls, prompt, query in pairs:
        (kp, lp), (fq, lq) = load(prompt), load(query)
        assert prompt != query and (lp == cls).mean() >= 0.05 and (lq == cls).mean() >= 0.05
        grid = (lp == cls).astype(np.float64).reshape(4, 16, 4, 16).mean(axis=(1, 3)).reshape(-1, 1)
        soft = softmax_rows(fq.reshape(-1, 3) @ kp.reshape(-1, 3).T / 3.0) @ grid
        soft = np.clip(bilinear_up(soft.reshape(4, 4, 1), 112)[..., 0], 0, 1)
        truth = centre_nearest(lq == cls, (112, 112)) > 0
        hard = soft >= 0.5
        ious.append((hard & truth).sum() / (hard | truth).sum())
        soft_ious.append((soft * truth).sum() / (soft + truth - soft * truth).sum())
    assert value(run["records"], "incontext-seg", "sharp-rgb", "iou50")["value"] == pytest.approx(100 * np.mean(ious), abs=1e-6)
    assert value(run["records"], "incontext-seg", "sharp-rgb", "soft_iou")["value"] == pytest.approx(100 * np.mean(soft_ious), rel=1e-6)
    assert np.mean(ious) > 0


def test_voc_reader_layout_and_errors(run, tmp_path):
    import harness
    from harness.datasets import open_dataset
    from harness.errors import DataFormatError
    from harness.config.schema import DatasetSpec

    registry = harness.config.registry.use_registry(run["registry"])
    data = open_dataset("voc2012", registry.dataset("voc2012"))
    assert [len(data.split(s)) for s in ("train", "val")] == [6, 3] and data.num_classes == 21 and data.ignore_index == 255
    image, labels = data.split("val").read(0)
    assert image.shape == (64, 64, 3) and set(np.unique(labels)) <= {0, 1, 7, 15, 255}
    with pytest.raises(DataFormatError, match="JPEGImages"):
        open_dataset("empty", DatasetSpec(format="voc", root=str(tmp_path)))
    synthetic = open_dataset("s", DatasetSpec(format="synthetic-scenes", options={"size": 48, "train": 3, "val": 2}))
    assert synthetic.synthetic and len(synthetic.split("val")) == 2
    with pytest.raises(harness.errors.HarnessError, match="unknown option"):
        open_dataset("s", DatasetSpec(format="synthetic-scenes", options={"colour": 1}))


def test_segmentation_task_parameters_are_typed():
    import harness
    from harness.kinds import ParamsError

    for name in ("coco-r2", "knn-seg", "incontext-seg"):  # the shared parameters
        task = harness.get_task(name, image_size=64, batch_size=4)
        assert (task.params.image_size, task.params.batch_size) == (64, 4)
    assert harness.get_task("coco-r2").params.photographs == ["astronaut", "coffee", "chelsea"]
    assert harness.get_task("knn-seg").params.queries is None  # all of val
    with pytest.raises(ParamsError, match="photographs"):
        harness.get_task("coco-r2", photographs=["download_all"])  # only scikit-image's photographs
    with pytest.raises(ParamsError, match="min_fraction"):
        harness.get_task("incontext-seg", min_fraction=0)
    with pytest.raises(ParamsError, match="did you mean 'memory_images'"):
        harness.get_task("knn-seg", memory_image=4)
