"""Procedurally composed segmentation scenes with exact masks (`synthetic-scenes`).

A scene is a textured background (label 0) with 2-4 objects painted over it, later
objects occluding earlier ones. Each object class is one (shape, texture) pair, so the
class can be told from form and pattern but never from colour: every object draws its
own two colours. Shapes are filled from their analytic definition at pixel centres
(no antialiasing) and textures are two-colour patterns, so the label map marks exactly
the pixels each object painted. Scene i of a stream depends only on (seed, stream, i).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.datasets.segmentation import SegmentationData, SegmentationSplit
from harness.datasets.spec import dataset_options

if TYPE_CHECKING:
    from harness.config.schema import DatasetSpec

# label -> (name, shape, texture); label 0 is the background
CLASSES: tuple[tuple[str, str, str], ...] = (
    ("background", "", "noise"),
    ("disk-stripes", "disk", "stripes"),
    ("square-checker", "square", "checker"),
    ("triangle-dots", "triangle", "dots"),
    ("ellipse-blobs", "ellipse", "blobs"),
    ("ring-grid", "ring", "grid"),
    ("cross-rings", "cross", "rings"),
)
CLASS_NAMES = [name for name, _, _ in CLASSES]


@dataclass
class SceneObject:
    label: int
    shape: str
    texture: str
    cx: float
    cy: float
    radius: float
    angle: float
    aspect: float
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    texture_params: dict[str, float] = field(default_factory=dict)


@dataclass
class Scene:
    image: np.ndarray  # uint8 [S, S, 3]
    labels: np.ndarray  # int64 [S, S], class per pixel
    instances: np.ndarray  # int64 [S, S], 0 = background, k = objects[k - 1]
    objects: list[SceneObject]


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x, y of the pixel centres of a size x size image ([S, S] each, float64)."""
    centres = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(centres, centres, indexing="xy")


def _rotated(x: np.ndarray, y: np.ndarray, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    dx, dy = x - cx, y - cy
    c, s = math.cos(angle), math.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def shape_mask(obj: SceneObject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pixels (centres x, y) inside the object's shape."""
    u, v = _rotated(x, y, obj.cx, obj.cy, obj.angle)
    r = obj.radius
    if obj.shape == "disk":
        return u * u + v * v <= r * r
    if obj.shape == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if obj.shape == "square":
        half = r / math.sqrt(2.0)
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if obj.shape == "ellipse":
        return (u / r) ** 2 + (v / (r * obj.aspect)) ** 2 <= 1.0
    if obj.shape == "cross":
        arm = 0.35 * r
        return ((np.abs(u) <= r) & (np.abs(v) <= arm)) | ((np.abs(v) <= r) & (np.abs(u) <= arm))
    if obj.shape == "triangle":
        # equilateral, circumradius r, one vertex along the rotated u axis: inside all
        # three edges' half-planes (each edge at distance r/2 from the centre)
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):
            theta = 2.0 * math.pi * k / 3.0 + math.pi
            inside &= u * math.cos(theta) + v * math.sin(theta) <= 0.5 * r
        return inside
    raise ValueError(f"unknown shape {obj.shape!r}")


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field_ = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return (field_ - field_.mean()) / (field_.std() + 1e-12)


def texture_pattern(obj: SceneObject, x: np.ndarray, y: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
    """The object's two-colour pattern: True where it takes its first colour."""
    p = obj.texture_params
    u, v = _rotated(x, y, obj.cx, obj.cy, p.get("angle", 0.0))
    period = p.get("period", 8.0)
    if obj.texture == "stripes":
        return np.mod(u + p["phase"], period) < 0.5 * period
    if obj.texture == "checker":
        return (np.floor((u + p["phase"]) / period) + np.floor((v + p["phase"]) / period)) % 2 == 0
    if obj.texture == "dots":
        du = np.mod(u + p["phase"], period) - 0.5 * period
        dv = np.mod(v + p["phase"], period) - 0.5 * period
        return du * du + dv * dv <= (0.3 * period) ** 2
    if obj.texture == "grid":
        return (np.mod(u + p["phase"], period) < 0.3 * period) | (np.mod(v + p["phase"], period) < 0.3 * period)
    if obj.texture == "rings":
        return np.mod(np.sqrt(u * u + v * v) + p["phase"], period) < 0.5 * period
    if obj.texture == "blobs":
        if noise is None:
            raise ValueError("the blobs texture needs its noise field")
        return noise > 0
    raise ValueError(f"unknown texture {obj.texture!r}")


def _colour_pair(rng: np.random.Generator, min_distance: float = 90.0) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    while True:
        a, b = rng.integers(0, 256, size=(2, 3))
        if float(np.linalg.norm(a.astype(float) - b.astype(float))) >= min_distance:
            return tuple(int(c) for c in a), tuple(int(c) for c in b)  # type: ignore[return-value]


def compose_scene(
    seed: int | list[int],
    size: int = 128,
    min_objects: int = 2,
    max_objects: int = 4,
    radius: tuple[float, float] = (0.14, 0.3),
    classes: tuple[int, ...] | None = None,
) -> Scene:
    """One scene, fully determined by `seed` (an int or a list of ints for numpy's
    SeedSequence). `radius` is the range of object radii as fractions of `size`;
    `classes` the labels objects are drawn from (default: all object classes)."""
    rng = np.random.default_rng(seed)
    x, y = pixel_grid(size)
    labels_pool = list(classes) if classes else list(range(1, len(CLASSES)))
    # background: smooth noise blended between two colours (label 0)
    bg_noise = _smooth_noise(rng, size, sigma=size * 0.08)
    bg_a, bg_b = _colour_pair(rng, min_distance=40.0)
    weight = (np.clip(bg_noise, -2.0, 2.0) + 2.0) / 4.0
    image = (np.asarray(bg_a, float)[None, None] * weight[..., None] + np.asarray(bg_b, float)[None, None] * (1 - weight[..., None]))
    image = np.rint(image).astype(np.uint8)
    labels = np.zeros((size, size), dtype=np.int64)
    instances = np.zeros((size, size), dtype=np.int64)
    objects: list[SceneObject] = []
    count = int(rng.integers(min_objects, max_objects + 1))
    for k in range(count):
        label = int(labels_pool[int(rng.integers(len(labels_pool)))])
        _, shape, texture = CLASSES[label]
        r = float(rng.uniform(*radius)) * size
        margin = 0.5 * r
        obj = SceneObject(
            label=label,
            shape=shape,
            texture=texture,
            cx=float(rng.uniform(margin, size - margin)),
            cy=float(rng.uniform(margin, size - margin)),
            radius=r,
            angle=float(rng.uniform(0.0, 2.0 * math.pi)),
            aspect=float(rng.uniform(0.45, 0.75)),
            colours=_colour_pair(rng),
            texture_params={
                "period": float(rng.uniform(0.06, 0.1)) * size,
                "phase": float(rng.uniform(0.0, size)),
                "angle": float(rng.uniform(0.0, math.pi)),
            },
        )
        noise = _smooth_noise(rng, size, sigma=size * 0.025) if texture == "blobs" else None
        inside = shape_mask(obj, x, y)
        pattern = texture_pattern(obj, x, y, noise)
        first, second = (np.asarray(c, np.uint8) for c in obj.colours)
        image[inside] = np.where(pattern[inside][:, None], first[None], second[None])
        labels[inside] = label
        instances[inside] = k + 1
        objects.append(obj)
    return Scene(image=image, labels=labels, instances=instances, objects=objects)


def scene_options(options: dict[str, Any]) -> dict[str, Any]:
    """The compose_scene keyword arguments among a dataset's options."""
    out: dict[str, Any] = {"size": int(options["size"])}
    out["min_objects"] = int(options["min_objects"])
    out["max_objects"] = int(options["max_objects"])
    out["radius"] = tuple(float(r) for r in options["radius"])
    return out


class SyntheticSplit(SegmentationSplit):
    """Scenes generated on demand: item i of split `stream` is compose_scene([seed, stream, i])."""

    image_mode = "bilinear-aa"
    label_mode = "nearest-exact"

    def __init__(self, name: str, count: int, seed: int, stream: int, scene: dict[str, Any]) -> None:
        super().__init__(name, workers=1)
        self.count, self.seed, self.stream, self.scene = count, seed, stream, scene

    def __len__(self) -> int:
        return self.count

    def compose(self, index: int) -> Scene:
        if not 0 <= index < self.count:
            raise IndexError(f"{self.name}: item {index} out of range (0..{self.count - 1})")
        return compose_scene([self.seed, self.stream, int(index)], **self.scene)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        scene = self.compose(index)
        return scene.image, scene.labels


def read_synthetic_scenes(name: str, spec: DatasetSpec) -> SegmentationData:
    """Procedural scenes with exact masks: 6 object classes, each a (shape, texture)
    pair, over a textured background (label 0); no root, nothing to download.

    Options: size (128 px), train (256), val (128) scenes, seed (0), min_objects (2),
    max_objects (4), radius ([0.14, 0.3] of the side). Splits "train" and "val" are
    disjoint streams of one seed.
    """
    options = dataset_options(name, spec, {"size": 128, "train": 256, "val": 128, "seed": 0, "min_objects": 2,
                                           "max_objects": 4, "radius": [0.14, 0.3]})
    scene = scene_options(options)
    splits: dict[str, SegmentationSplit] = {
        split: SyntheticSplit(f"{name}/{split}", int(options[split]), int(options["seed"]), stream, scene)
        for stream, split in enumerate(("train", "val"))
    }
    return SegmentationData(
        name=name, splits=splits, classes=list(CLASS_NAMES), image_size=None, synthetic=True,
        description=f"synthetic scenes, {options['size']} px, train {options['train']} / val {options['val']}, seed {options['seed']}",
    )
