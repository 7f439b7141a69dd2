"""`dead-leaves`: random shapes with power-law sizes, stacked until the canvas is covered.

The dead-leaves model of Baradad et al. (2021): leaves (circles, squares, oriented
squares, rectangles, triangles, quadrilaterals, or a mix) with radius density
proportional to r^-alpha on [rmin, rmax] (relative to the image side; alpha = 3),
centres uniform on the image, uniform random RGB colours, drawn until every pixel is
covered or `max_shapes` leaves have fallen.

Leaves fall *under* the ones already there (each new leaf only colours pixels that are
still bare). That is the exact simulation of the stationary dead-leaves process
(Kendall and Thoennes 1999); painting each new leaf on top and stopping at full cover
is not stationary (the last, small leaves dominate). Pixels still bare after
`max_shapes` leaves (rare, at corners) take the colour of one more leaf covering the
whole canvas.

A scene is defined in continuous image coordinates, so the same (seed, index) at two
sizes is the same scene at two resolutions. Every leaf is tested at pixel centres,
vectorised in numpy over (pixel, leaf) pairs: a bounding-circle test first, the
polygon's edge tests only on the pairs inside that circle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import Field, ValidationInfo, field_validator

from harness.hookspecs import hookimpl
from harness.kinds import Generator

from harness_plugins.generators._seeding import check_sample_args, rng

if TYPE_CHECKING:
    import torch

LeafShape = Literal["circle", "square", "oriented_square", "rectangle", "triangle", "quadrilateral", "mixed"]
SHAPES: tuple[str, ...] = get_args(LeafShape)[:-1]  # "mixed" draws one of these per leaf
BLOCK = 256  # leaves are drawn in blocks of this many, each block from its own seed
_WORK = 1 << 18  # (pixels x leaves) pairs tested per step: bounds memory, not results
_SWITCH = 0.05  # bare fraction below which bare pixels are tested against leaves


class DeadLeaves(Generator):
    """Dead leaves: random shapes with radius density ~ r^-alpha on [rmin, rmax]."""

    version = 1

    class Params(Generator.Params):
        shape: LeafShape = Field("mixed", description="leaf shape; mixed draws one of the six per leaf")
        rmin: float = Field(0.03, ge=1e-4, le=10.0, description="smallest leaf radius, relative to the image side")
        rmax: float = Field(1.0, ge=1e-4, le=10.0, description="largest leaf radius, relative to the image side")
        alpha: float = Field(3.0, ge=0.0, le=20.0, description="exponent of the radius density r^-alpha")
        max_shapes: int = Field(5000, ge=1, description="leaves drawn at most per image (bare pixels then take one more)")

        @field_validator("rmax")
        @classmethod
        def _at_least_rmin(cls, rmax: float, info: ValidationInfo) -> float:
            rmin = info.data.get("rmin")
            if rmin is not None and rmax < rmin:
                raise ValueError(f"must be >= rmin ({rmin})")
            return rmax

    # ------------------------------------------------------------------ leaves
    def _radii(self, u: Any) -> Any:
        """Inverse CDF of the density r^-alpha on [rmin, rmax]."""
        import numpy as np

        a, lo, hi = self.params.alpha, self.params.rmin, self.params.rmax
        if hi == lo:
            return np.full_like(u, lo)
        if abs(a - 1.0) < 1e-9:
            return lo * (hi / lo) ** u
        e = 1.0 - a
        return (lo**e + u * (hi**e - lo**e)) ** (1.0 / e)

    def leaves(self, seed: int, index: int, block: int) -> dict[str, Any]:
        """Leaves block*BLOCK .. (block+1)*BLOCK-1 of image `index` (float32 arrays).

        Every shape is a circle of radius r or a convex polygon inscribed in it (four
        vertices, counter-clockwise; a triangle repeats its last vertex).
        """
        import numpy as np

        shape = self.params.shape
        u = rng("dead-leaves", shape, seed, index, block).random((BLOCK, 12))
        if shape == "mixed":
            kind = np.minimum((u[:, 0] * len(SHAPES)).astype(np.int64), len(SHAPES) - 1)
        else:
            kind = np.full(BLOCK, SHAPES.index(shape), dtype=np.int64)
        r = self._radii(u[:, 1])
        cx, cy = u[:, 2], u[:, 3]
        quarter = np.pi / 4 + np.arange(4) * (np.pi / 2)  # square corners
        angles = np.broadcast_to(quarter, (BLOCK, 4)).copy()
        oriented = kind == SHAPES.index("oriented_square")
        angles[oriented] += u[oriented, 4:5] * (np.pi / 2)
        rect = kind == SHAPES.index("rectangle")
        a = u[rect, 4] * (np.pi / 2)  # half-angle of the rectangle's corners
        angles[rect] = np.stack([a, np.pi - a, np.pi + a, 2 * np.pi - a], axis=1)
        tri = kind == SHAPES.index("triangle")
        t = np.sort(u[tri, 5:8] * (2 * np.pi), axis=1)
        angles[tri] = np.concatenate([t, t[:, 2:3]], axis=1)
        quad = kind == SHAPES.index("quadrilateral")
        angles[quad] = np.sort(u[quad, 5:9] * (2 * np.pi), axis=1)
        colour = np.minimum(np.floor(u[:, 9:12] * 256.0), 255.0)
        return {
            "circle": (kind == 0).astype(np.float32),
            "cx": cx.astype(np.float32),
            "cy": cy.astype(np.float32),
            "r2": (r * r).astype(np.float32),
            "vx": (r[:, None] * np.cos(angles)).astype(np.float32),
            "vy": (r[:, None] * np.sin(angles)).astype(np.float32),
            "colour": colour.astype(np.uint8),
        }

    def label_maps(self, seed: int, indices: list[int], size: int) -> tuple[Any, list[Any]]:
        """Per image the index of the leaf seen at each pixel ([n, size, size] int64 numpy;
        -1 where no leaf fell within `max_shapes`) and each image's leaf colours.

        A pixel shows the first leaf (lowest index) that covers it. While much of the
        canvas is bare, leaves are rasterised over their bounding boxes; once little is
        left, the remaining bare pixels are tested against the next leaves instead. Both
        phases give the same labels; the switch only saves work.
        """
        import numpy as np

        n, hw = len(indices), size * size
        max_shapes = self.params.max_shapes
        bare_label = np.iinfo(np.int64).max
        labels = np.full(n * hw, bare_label, dtype=np.int64)  # flat: image * hw + y * size + x
        colours: list[list[Any]] = [[] for _ in range(n)]
        params: dict[str, Any] = {}
        bare = np.full(n, hw)  # bare pixels per image
        drawn, done = 0, 0  # leaves drawn per image so far / leaves placed so far

        def draw_block() -> None:
            nonlocal drawn
            block = drawn // BLOCK
            new = [self.leaves(seed, indices[i], block) if bare[i] else None for i in range(n)]
            blank = next(b for b in new if b is not None)
            new = [b if b is not None else {key: np.zeros_like(v) for key, v in blank.items()} for b in new]
            for key in blank:
                stacked = np.stack([b[key] for b in new])
                params[key] = stacked if key not in params else np.concatenate([params[key], stacked], axis=1)
            for i in range(n):
                colours[i].append(new[i]["colour"])
            drawn += BLOCK

        def place(gpix: Any, leaf: Any, img: Any) -> None:
            """Label each pixel of the pairs (flat pixel, leaf) with the lowest leaf
            that covers it."""
            y, x = np.divmod(gpix - img * hw, size)
            qx = (x.astype(np.float32) + 0.5) / size - params["cx"][img, leaf]
            qy = (y.astype(np.float32) + 0.5) / size - params["cy"][img, leaf]
            ok = qx * qx + qy * qy <= params["r2"][img, leaf]
            gpix, leaf, img, qx, qy = gpix[ok], leaf[ok], img[ok], qx[ok], qy[ok]
            poly = params["circle"][img, leaf] == 0
            if poly.any():
                vx, vy = params["vx"][img[poly], leaf[poly]], params["vy"][img[poly], leaf[poly]]
                ex, ey = np.roll(vx, -1, axis=1) - vx, np.roll(vy, -1, axis=1) - vy
                cross = ex * (qy[poly, None] - vy) - ey * (qx[poly, None] - vx)
                ok = np.ones(gpix.size, dtype=bool)
                ok[poly] = (cross >= 0).all(axis=1)
                gpix, leaf, img = gpix[ok], leaf[ok], img[ok]
            np.minimum.at(labels, gpix, leaf)  # the lowest leaf wins, whatever the order
            bare[:] = (labels == bare_label).reshape(n, hw).sum(axis=1)

        # Phase 1: rasterise leaves over their bounding boxes while the canvas is bare.
        while bare.sum() > _SWITCH * n * hw and done < max_shapes:
            k = min(64, max_shapes - done)
            while done + k > drawn:
                draw_block()
            act = np.flatnonzero(bare)
            img = np.repeat(act, k)
            leaf = np.tile(np.arange(done, done + k), act.size)
            cx, cy = params["cx"][img, leaf], params["cy"][img, leaf]
            r = np.sqrt(params["r2"][img, leaf])
            x0 = np.clip(np.ceil((cx - r) * size - 0.5), 0, size).astype(np.int64)
            x1 = np.clip(np.floor((cx + r) * size - 0.5) + 1, 0, size).astype(np.int64)
            y0 = np.clip(np.ceil((cy - r) * size - 0.5), 0, size).astype(np.int64)
            y1 = np.clip(np.floor((cy + r) * size - 0.5) + 1, 0, size).astype(np.int64)
            w, h = np.maximum(x1 - x0, 0), np.maximum(y1 - y0, 0)
            count = w * h
            pair = np.repeat(np.arange(img.size), count)
            offset = np.arange(pair.size) - np.repeat(np.cumsum(count) - count, count)
            wp = w[pair]
            gpix = img[pair] * hw + (y0[pair] + offset // wp) * size + x0[pair] + offset % wp
            todo = labels[gpix] == bare_label
            pair, gpix = pair[todo], gpix[todo]
            place(gpix, leaf[pair], img[pair])
            done += k

        # Phase 2: test the few bare pixels against the next leaves.
        todo_pix = np.flatnonzero(labels == bare_label)
        while todo_pix.size and done < max_shapes:
            k = min(BLOCK, max(4, _WORK // todo_pix.size), max_shapes - done)
            while done + k > drawn:
                draw_block()
            img = todo_pix // hw
            gpix = np.repeat(todo_pix, k)
            leaf = np.tile(np.arange(done, done + k), todo_pix.size)
            place(gpix, leaf, np.repeat(img, k))
            todo_pix = todo_pix[labels[todo_pix] == bare_label]
            done += k
        labels[labels == bare_label] = -1
        palettes = [np.concatenate(c) if c else np.zeros((0, 3), np.uint8) for c in colours]
        return labels.reshape(n, size, size), palettes

    def sample(self, seed: int, n: int, size: int, start: int = 0) -> torch.Tensor:
        import numpy as np
        import torch

        seed, n, size, start = check_sample_args(seed, n, size, start)
        out = np.empty((n, size, size, 3), dtype=np.uint8)
        # Batches keep the work arrays small; results do not depend on them.
        step = max(1, min(64, (1 << 18) // (size * size)))
        for b0 in range(0, n, step):
            indices = list(range(start + b0, start + min(n, b0 + step)))
            labels, palettes = self.label_maps(seed, indices, size)
            for i, index in enumerate(indices):
                lab, palette = labels[i], palettes[i]
                if len(palette) == 0:
                    palette = np.zeros((1, 3), dtype=np.uint8)
                out[b0 + i] = palette[np.maximum(lab, 0)]
                bare = lab < 0
                if bare.any():
                    out[b0 + i][bare] = rng("dead-leaves-background", seed, index).integers(0, 256, 3)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


@hookimpl
def register_generators(register: Any) -> None:
    register("dead-leaves", DeadLeaves)
