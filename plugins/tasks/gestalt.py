"""Gestalt perception (the paper's section 8, Table 4 and Figure 15).

Seven principles, each a procedural stimulus generator that returns a randomised image
and the segmentation a human perceives in it. Every encoder's feature PCA is scored
against that segmentation with the zero-shot segmentation R^2
(`harness.metrics.segmentation_r2`, in percent): high when the features group what a
human groups. Each principle is one of the task's datasets, so the leaderboard table
reads like Table 4 (rows encoders, columns principles).

  closure     a shape drawn with a dashed outline; perceived: its completed interior (1)
              against the outside (2). The gaps belong to the shape.
  kanizsa     pac-man inducers at the corners of a triangle or square; perceived: the
              illusory figure (1, the whole polygon, none of it inked) against the rest (2).
  connection  rows of dots at alternating near and far spacing, lines joining the far
              neighbours; perceived: each joined pair (1..k, the capsule around it), although
              proximity alone would pair the near dots. Unjoined end dots are background.
  continuity  two smooth dotted curves crossing; perceived: each curve (1, 2: a band
              around it; at the crossing each pixel goes to the nearer curve).
  enclosure   a grid of identical dots, an outline around some of them; perceived: the
              enclosed region (1) against the outside (2).
  proximity   groups of dot columns, gaps between groups wider than within; perceived: each
              group (1..k, the cells of its dots); the space between groups is background.
  similarity  an evenly spaced grid of elements of two kinds (colour and/or shape) in
              alternating bands; perceived: all elements of a kind, however far apart
              (1, 2: the grid cells of its elements).

Label 0 is background and is left out of R^2, as for COCO. Stimulus i of a principle
depends only on (seed, principle, i); size is a parameter (default 224 px).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, get_args

import numpy as np
from pydantic import Field, NonNegativeInt, PositiveInt

from harness.hookspecs import hookimpl
from harness.kinds import Task
from harness.metrics import SEGMENTATION_SIZE

Principle = Literal["closure", "kanizsa", "connection", "continuity", "enclosure", "proximity", "similarity"]
PRINCIPLES: tuple[str, ...] = get_args(Principle)
WHITE = np.array([255, 255, 255], np.uint8)
BLACK = np.array([0, 0, 0], np.uint8)


@dataclass
class Stimulus:
    image: np.ndarray  # uint8 [S, S, 3]
    labels: np.ndarray  # int64 [S, S], the perceived segmentation (0 = background)
    info: dict[str, Any] = field(default_factory=dict)  # the geometry, for checks and captions


# ------------------------------------------------------------------------ geometry
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(centres, centres, indexing="xy")


def _segment_distance(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each pixel centre to the segment a-b, and the projection t in [0, 1]."""
    d = b - a
    length2 = float(d @ d)
    t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1]) / max(length2, 1e-12), 0.0, 1.0)
    return np.hypot(x - (a[0] + t * d[0]), y - (a[1] + t * d[1])), t


def _polygon_inside(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Inside a convex polygon (vertices counter-clockwise in x-y)."""
    inside = np.ones(x.shape, dtype=bool)
    for k in range(len(vertices)):
        a, b = vertices[k], vertices[(k + 1) % len(vertices)]
        inside &= (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0]) >= 0
    return inside


def _outline_position(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Distance to a closed polygon's outline and the arclength of the nearest outline point."""
    best = np.full(x.shape, np.inf)
    position = np.zeros(x.shape)
    travelled = 0.0
    for k in range(len(vertices)):
        a, b = vertices[k], vertices[(k + 1) % len(vertices)]
        dist, t = _segment_distance(x, y, a, b)
        length = float(np.hypot(*(b - a)))
        closer = dist < best
        best = np.where(closer, dist, best)
        position = np.where(closer, travelled + t * length, position)
        travelled += length
    return best, position, travelled


def _curve_distance(x: np.ndarray, y: np.ndarray, points: np.ndarray, limit: float) -> np.ndarray:
    """Distance of each pixel centre to a densely sampled curve (its nearest sample);
    inf beyond `limit`."""
    from scipy.spatial import cKDTree

    distance, _ = cKDTree(points).query(np.stack([x.ravel(), y.ravel()], axis=1), distance_upper_bound=limit)
    return distance.reshape(x.shape)


def _regular_polygon(cx: float, cy: float, radius: float, sides: int, angle: float) -> np.ndarray:
    theta = angle + 2.0 * math.pi * np.arange(sides) / sides
    return np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1)


def _disk(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def _canvas(size: int) -> np.ndarray:
    return np.broadcast_to(WHITE, (size, size, 3)).copy()


def _stroke(size: int) -> float:
    return max(2.0, 0.018 * size)


# ---------------------------------------------------------------------- principles
def closure(rng: np.random.Generator, size: int) -> Stimulus:
    x, y = _grid(size)
    sides = int(rng.choice([0, 3, 4, 5, 6]))  # 0: a circle
    radius = rng.uniform(0.26, 0.36) * size
    cx, cy = (0.5 + rng.uniform(-0.06, 0.06, size=2)) * size
    angle = rng.uniform(0, 2 * math.pi)
    width = _stroke(size)
    if sides == 0:
        vertices = _regular_polygon(cx, cy, radius, 96, angle)
    else:
        vertices = _regular_polygon(cx, cy, radius, sides, angle)
    distance, position, perimeter = _outline_position(x, y, vertices)
    dashes = int(rng.integers(8, 15))
    period = perimeter / dashes
    duty = rng.uniform(0.4, 0.6)
    phase = rng.uniform(0, period)
    band = distance <= width / 2
    ink = band & (np.mod(position + phase, period) < duty * period)
    image = _canvas(size)
    image[ink] = BLACK
    figure = _polygon_inside(x, y, vertices) | band
    labels = np.where(figure, 1, 2).astype(np.int64)
    return Stimulus(image, labels, {"vertices": vertices, "width": width, "band": band, "ink": ink, "sides": sides})


def kanizsa(rng: np.random.Generator, size: int) -> Stimulus:
    x, y = _grid(size)
    sides = int(rng.choice([3, 4]))
    radius = rng.uniform(0.24, 0.32) * size
    cx, cy = (0.5 + rng.uniform(-0.04, 0.04, size=2)) * size
    vertices = _regular_polygon(cx, cy, radius, sides, rng.uniform(0, 2 * math.pi))
    side = 2 * radius * math.sin(math.pi / sides)
    inducer = rng.uniform(0.22, 0.3) * side
    disks = np.zeros(x.shape, dtype=bool)
    for vx, vy in vertices:
        disks |= _disk(x, y, vx, vy, inducer)
    figure = _polygon_inside(x, y, vertices)
    image = _canvas(size)
    image[disks & ~figure] = BLACK
    labels = np.where(figure, 1, 2).astype(np.int64)
    return Stimulus(image, labels, {"vertices": vertices, "inducer_radius": inducer})


def connection(rng: np.random.Generator, size: int) -> Stimulus:
    x, y = _grid(size)
    rows, pairs_per_row = int(rng.integers(2, 4)), int(rng.integers(2, 4))
    count = 2 * pairs_per_row + 2
    ratio = rng.uniform(1.8, 2.4)  # the joined dots are farther apart than their unjoined neighbours
    gaps = np.array([1.0 if k % 2 == 0 else ratio for k in range(count - 1)])
    near = 0.9 * size / gaps.sum()
    along = np.concatenate([[0.0], np.cumsum(gaps * near)])
    along = along - along[-1] / 2 + size / 2
    row_gap = min(1.6 * ratio * near, 0.9 * size / max(rows - 1, 1))
    across = (np.arange(rows) - (rows - 1) / 2) * row_gap + size / 2
    transpose = bool(rng.random() < 0.5)
    dot = rng.uniform(0.18, 0.24) * near
    width = _stroke(size)
    image = _canvas(size)
    labels = np.zeros((size, size), dtype=np.int64)
    centres, pairs = [], []
    for r in range(rows):
        row = [np.array((a, across[r])[:: -1 if transpose else 1]) for a in along]
        centres.append(row)
        for point in row:
            image[_disk(x, y, *point, dot)] = BLACK
        for k in range(1, count - 1, 2):  # join dot k to dot k + 1, across the wide gap
            a, b = row[k], row[k + 1]
            dist, _ = _segment_distance(x, y, a, b)
            image[dist <= width / 2] = BLACK
            pairs.append((a, b))
            labels[dist <= 0.45 * near] = len(pairs)
    return Stimulus(image, labels, {"centres": centres, "pairs": pairs, "near": near, "far": ratio * near, "dot": dot})


def continuity(rng: np.random.Generator, size: int) -> Stimulus:
    x, y = _grid(size)
    centre = (0.5 + rng.uniform(-0.05, 0.05, size=2)) * size
    half = 0.42 * size
    curves = []
    base = rng.uniform(0, math.pi)
    for k in range(2):
        angle = base + k * math.pi / 2 + rng.uniform(-0.25, 0.25)
        amplitude = rng.uniform(0.05, 0.12) * size
        frequency = rng.uniform(0.6, 1.2) * math.pi / half
        phase = rng.uniform(0, 2 * math.pi)
        t = np.linspace(-half, half, 4 * size)
        offset = amplitude * (np.sin(frequency * t + phase) - math.sin(phase))  # passes through the centre
        direction = np.array([math.cos(angle), math.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        curves.append(centre[None] + t[:, None] * direction[None] + offset[:, None] * normal[None])
    spacing = rng.uniform(0.045, 0.06) * size
    dot = rng.uniform(0.22, 0.3) * spacing
    band = 0.5 * spacing + dot
    image = _canvas(size)
    distances = []
    dots = []
    for points in curves:
        steps = np.hypot(*np.diff(points, axis=0).T)
        arclength = np.concatenate([[0.0], np.cumsum(steps)])
        marks = np.arange(0.0, arclength[-1], spacing)
        placed = np.stack([np.interp(marks, arclength, points[:, 0]), np.interp(marks, arclength, points[:, 1])], axis=1)
        dots.append(placed)
        for px, py in placed:
            image[_disk(x, y, px, py, dot)] = BLACK
        distances.append(_curve_distance(x, y, points, 1.001 * band))
    labels = np.zeros((size, size), dtype=np.int64)
    labels[(distances[0] <= band) & (distances[0] <= distances[1])] = 1
    labels[(distances[1] <= band) & (distances[1] < distances[0])] = 2
    return Stimulus(image, labels, {"curves": curves, "dots": dots, "spacing": spacing, "dot": dot, "band": band})


def enclosure(rng: np.random.Generator, size: int) -> Stimulus:
    x, y = _grid(size)
    count = int(rng.integers(5, 8))
    spacing = 0.9 * size / count
    origin = (size - (count - 1) * spacing) / 2
    dot = rng.uniform(0.14, 0.2) * spacing
    h, w = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    r0, c0 = int(rng.integers(0, count - h + 1)), int(rng.integers(0, count - w + 1))
    image = _canvas(size)
    centres = []
    for r in range(count):
        for c in range(count):
            cx, cy = origin + c * spacing, origin + r * spacing
            centres.append((cx, cy, r0 <= r < r0 + h and c0 <= c < c0 + w))
            image[_disk(x, y, cx, cy, dot)] = BLACK
    # the outline runs midway between dot rows and columns
    left, right = origin + (c0 - 0.5) * spacing, origin + (c0 + w - 0.5) * spacing
    top, bottom = origin + (r0 - 0.5) * spacing, origin + (r0 + h - 0.5) * spacing
    vertices = np.array([[left, top], [left, bottom], [right, bottom], [right, top]])
    width = _stroke(size)
    outline = _outline_position(x, y, vertices)[0] <= width / 2
    image[outline] = BLACK
    inside = (x >= left) & (x <= right) & (y >= top) & (y <= bottom)
    labels = np.where(inside | outline, 1, 2).astype(np.int64)
    return Stimulus(image, labels, {"centres": centres, "box": (left, top, right, bottom), "dot": dot, "outline": outline})


def proximity(rng: np.random.Generator, size: int) -> Stimulus:
    x, y = _grid(size)
    groups = int(rng.integers(2, 5))
    per_group = int(rng.integers(2, 4))
    rows = int(rng.integers(4, 7))
    ratio = rng.uniform(2.2, 3.2)  # gap between groups / spacing within
    columns = groups * per_group
    span = 0.9 * size
    within = span / ((columns - groups) + (groups - 1) * ratio)
    between = ratio * within
    within = min(within, span / max(rows - 1, 1))
    dot = rng.uniform(0.2, 0.28) * within
    xs, group_of = [], []
    position = 0.0
    for g in range(groups):
        for k in range(per_group):
            xs.append(position)
            group_of.append(g)
            position += within if k < per_group - 1 else between
    xs = np.asarray(xs) - xs[-1] / 2 + size / 2
    ys = (np.arange(rows) - (rows - 1) / 2) * within + size / 2
    transpose = bool(rng.random() < 0.5)  # groups of rows instead of columns
    image = _canvas(size)
    labels = np.zeros((size, size), dtype=np.int64)
    dots = []
    for g in range(groups):
        cols = xs[np.asarray(group_of) == g]
        lo, hi = cols.min() - within / 2, cols.max() + within / 2
        ylo, yhi = ys.min() - within / 2, ys.max() + within / 2
        u, v = (y, x) if transpose else (x, y)
        labels[(u >= lo) & (u < hi) & (v >= ylo) & (v < yhi)] = g + 1
        for cx in cols:
            for cy in ys:
                px, py = (cy, cx) if transpose else (cx, cy)
                dots.append((px, py, g + 1))
                image[_disk(x, y, px, py, dot)] = BLACK
    return Stimulus(image, labels, {"dots": dots, "within": within, "between": between, "dot": dot})


def similarity(rng: np.random.Generator, size: int) -> Stimulus:
    x, y = _grid(size)
    count = int(rng.integers(5, 9))
    spacing = 0.9 * size / count
    origin = (size - (count - 1) * spacing) / 2
    extent = 0.3 * spacing
    cue = str(rng.choice(["colour", "shape", "both"]))
    band = int(rng.integers(1, 3))  # rows (or columns) per band
    by_column = bool(rng.random() < 0.5)
    colours = [BLACK, BLACK]
    if cue in ("colour", "both"):
        while True:
            a, b = rng.integers(0, 220, size=(2, 3))
            if np.linalg.norm(a.astype(float) - b.astype(float)) >= 120:
                colours = [a.astype(np.uint8), b.astype(np.uint8)]
                break
    shapes = ["disk", "square"] if cue in ("shape", "both") else ["disk", "disk"]
    if cue in ("shape", "both") and rng.random() < 0.5:
        shapes = shapes[::-1]
    image = _canvas(size)
    labels = np.zeros((size, size), dtype=np.int64)
    elements = []
    for r in range(count):
        for c in range(count):
            kind = ((c if by_column else r) // band) % 2
            cx, cy = origin + c * spacing, origin + r * spacing
            if shapes[kind] == "disk":
                ink = _disk(x, y, cx, cy, extent)
            else:
                ink = (np.abs(x - cx) <= 0.85 * extent) & (np.abs(y - cy) <= 0.85 * extent)
            image[ink] = colours[kind]
            cell = (np.abs(x - cx) <= spacing / 2) & (np.abs(y - cy) <= spacing / 2) & (labels == 0)
            labels[cell] = kind + 1
            elements.append((cx, cy, kind + 1))
    return Stimulus(image, labels, {"elements": elements, "spacing": spacing, "cue": cue, "shapes": shapes,
                                    "colours": [tuple(int(v) for v in c) for c in colours]})


GENERATORS: dict[str, Callable[[np.random.Generator, int], Stimulus]] = {
    "closure": closure,
    "kanizsa": kanizsa,
    "connection": connection,
    "continuity": continuity,
    "enclosure": enclosure,
    "proximity": proximity,
    "similarity": similarity,
}


def stimulus(principle: str, index: int, size: int = 224, seed: int = 0) -> Stimulus:
    """Stimulus `index` of a principle: depends only on (seed, principle, index, size)."""
    if principle not in GENERATORS:
        from harness.errors import UnknownNameError

        raise UnknownNameError("gestalt principle", principle, list(PRINCIPLES))
    rng = np.random.default_rng([int(seed), PRINCIPLES.index(principle), int(index)])
    return GENERATORS[principle](rng, int(size))


# ---------------------------------------------------------------------------- the task
class GestaltTask(Task):
    """R^2 of each encoder's feature PCA against the segmentation a human perceives."""

    class Params(Task.Params):
        datasets: list[Principle] | None = Field(None, description="principles to run (default: all seven)")
        images: PositiveInt = Field(64, description="stimuli per principle")
        size: PositiveInt = Field(224, description="stimulus side in pixels")
        seed: NonNegativeInt = Field(0, description="stimulus i depends only on (seed, principle, i, size)")
        r2_size: PositiveInt = Field(SEGMENTATION_SIZE, description="side at which R^2 compares features and labels")
        figure_images: NonNegativeInt = Field(2, description="stimuli per principle shown in the figure")
        batch_size: PositiveInt = Field(32, description="stimuli per embedding batch")

    params: Params
    default_datasets = PRINCIPLES
    needs_patches = True
    title = "Gestalt: R^2 of feature PCA vs the perceived segmentation (%, Table 4)"

    def run(self, encoder: Any, ctx: Any) -> list:
        import torch

        from harness.metrics import segmentation_inertia
        from harness.results.paths import FIGURES
        from harness_plugins.tasks._seg_ops import embed_patches, write_pca_parts

        principle, count, size, seed = ctx.dataset, self.params.images, self.params.size, self.params.seed
        r2_size, batch_size = self.params.r2_size, self.params.batch_size
        n_figure = min(self.params.figure_images, count)
        means = ("scalar", "per_component")
        inertia = np.empty((count, len(means)))
        items, item_feats = [], []
        for start in range(0, count, batch_size):
            stimuli = [stimulus(principle, i, size, seed) for i in range(start, min(start + batch_size, count))]
            images = torch.from_numpy(np.stack([s.image.transpose(2, 0, 1) for s in stimuli]))
            labels = np.stack([s.labels for s in stimuli])
            feats = embed_patches(encoder, images)
            inertia[start : start + len(stimuli)] = segmentation_inertia(feats, labels, size=r2_size, mean=means, device=ctx.device)
            for j in range(len(stimuli)):
                if start + j < n_figure:
                    items.append((f"{principle}-{start + j}", images[j].numpy(), labels[j]))
                    item_feats.append(feats[j])
        if items:
            write_pca_parts(ctx.run.out_dir / FIGURES, self.name, principle, encoder.name, items, item_feats, r2_size)
        records = []
        for j, mean in enumerate(means):
            values = inertia[:, j]
            valid = values[~np.isnan(values)]
            r2 = 100.0 * (1.0 - float(valid.mean())) if len(valid) else float("nan")
            records.append(ctx.result("r2", r2, n=len(valid), headline=(mean == "scalar"), mean=mean, images=count,
                                      size=size, seed=seed, nan_images=int(np.isnan(values).sum())))
        return records

    @classmethod
    def paper_numbers(cls) -> Any:
        from harness_plugins.tasks._seg_paper import paper_numbers

        return paper_numbers("gestalt")

    @classmethod
    def figures(cls, results: Any, out_dir: Path) -> list[Path]:
        """Per principle: the stimuli, the perceived segmentation and every encoder's
        feature PCA side by side (Figure 15)."""
        from harness_plugins.tasks._seg_ops import compose_pca_grid, encoder_order, pca_dir

        ok = results[results.status == "ok"]
        paths = []
        for task in ok.task.unique():
            rows = ok[ok.task == task]
            order = [p for p in PRINCIPLES if p in set(rows.dataset)] + sorted(set(rows.dataset) - set(PRINCIPLES))
            for principle in order:
                subset = rows[rows.dataset == principle]
                path = compose_pca_grid(
                    pca_dir(out_dir, task, principle), encoder_order(subset), out_dir / f"{task}_{principle}.png",
                    title=f"{principle}: stimulus, perceived segmentation, feature PCA per encoder",
                )
                if path is not None:
                    paths.append(path)
        return paths


@hookimpl
def register_tasks(register: Any) -> None:
    register("gestalt", GestaltTask)
