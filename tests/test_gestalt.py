"""Gestalt stimuli: each principle's perceived segmentation has the structure it claims,
stimuli are reproducible, and the task runs end to end into a Table-4-shaped
leaderboard with one figure per principle."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as connected

from harness_plugins.tasks.gestalt import GENERATORS, PRINCIPLES, stimulus
from helpers import cli

SIZE = 128
SEEDS = range(6)


def is_ink(image: np.ndarray) -> np.ndarray:
    return (image != 255).any(axis=2)


def components(mask: np.ndarray, connectivity: int = 1) -> int:
    return int(connected(mask, connectivity=connectivity).max())


def at(labels: np.ndarray, x: float, y: float) -> int:
    return int(labels[int(y), int(x)])


def test_every_principle_is_reproducible_and_randomised():
    assert set(GENERATORS) == set(PRINCIPLES) and len(PRINCIPLES) == 7
    for principle in PRINCIPLES:
        a, b = stimulus(principle, 3, SIZE, seed=1), stimulus(principle, 3, SIZE, seed=1)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
        assert a.image.shape == (SIZE, SIZE, 3) and a.image.dtype == np.uint8 and a.labels.shape == (SIZE, SIZE)
        others = [stimulus(principle, i, SIZE, seed=1) for i in range(4, 8)]
        assert any(not np.array_equal(a.image, o.image) for o in others)
        assert not np.array_equal(a.image, stimulus(principle, 3, SIZE, seed=2).image)
        assert len(np.unique(a.labels[a.labels > 0])) >= 2  # R^2 needs two perceived parts


def test_closure_figure_covers_the_gaps():
    for i in SEEDS:
        s = stimulus("closure", i, SIZE)
        ink, band = s.info["ink"], s.info["band"]
        assert set(np.unique(s.labels)) == {1, 2}
        gaps = band & ~ink
        assert ink.any() and gaps.sum() > 0.2 * band.sum()  # a dashed, open outline
        assert (s.labels[band] == 1).all()  # the completed contour, gaps included, belongs to the figure
        assert (s.labels[is_ink(s.image)] == 1).all()
        figure = s.labels == 1
        assert components(figure) == 1 and components(~figure) == 1  # one shape, no holes
        assert components(~is_ink(s.image)) == 1  # the ink alone does not close: inside meets outside
        assert ndimage.binary_fill_holes(figure).sum() == figure.sum()


def test_kanizsa_figure_is_illusory():
    for i in SEEDS:
        s = stimulus("kanizsa", i, SIZE)
        ink = is_ink(s.image)
        figure = s.labels == 1
        assert set(np.unique(s.labels)) == {1, 2}
        assert not (ink & figure).any()  # no part of the figure is drawn
        vertices, radius = s.info["vertices"], s.info["inducer_radius"]
        for k, (vx, vy) in enumerate(vertices):
            # an inducer sits on each corner: ink just outside the corner, along the diagonal
            cx, cy = np.mean(vertices, axis=0)
            out = np.array([vx, vy]) + 0.6 * radius * (np.array([vx, vy]) - [cx, cy]) / np.hypot(vx - cx, vy - cy)
            assert ink[int(out[1]), int(out[0])]
            # the figure's edge between inducers is not drawn: white on both sides at mid-edge
            wx, wy = vertices[(k + 1) % len(vertices)]
            mx, my = (vx + wx) / 2, (vy + wy) / 2
            for side in (-3, 3):
                px, py = np.array([mx, my]) + side * (np.array([mx, my]) - [cx, cy]) / np.hypot(mx - cx, my - cy)
                assert not ink[int(py), int(px)]
                assert at(s.labels, px, py) == (1 if side < 0 else 2)
        assert at(s.labels, *np.mean(vertices, axis=0)) == 1 and components(figure) == 1


def test_connection_joins_the_far_neighbours():
    for i in SEEDS:
        s = stimulus("connection", i, SIZE)
        ink = is_ink(s.image)
        pairs, near, far = s.info["pairs"], s.info["near"], s.info["far"]
        assert far > 1.5 * near  # proximity alone would group differently
        dots = np.array([p for row in s.info["centres"] for p in row])
        assert len(np.unique(s.labels[s.labels > 0])) == len(pairs)
        for k, (a, b) in enumerate(pairs, start=1):
            assert at(s.labels, *a) == k and at(s.labels, *b) == k
            members = [d for d in dots if at(s.labels, *d) == k]
            assert len(members) == 2  # exactly the joined pair
            for t in np.linspace(0, 1, 9):  # the joining line is drawn
                px, py = a + t * (b - a)
                assert ink[int(py), int(px)]
            assert np.hypot(*(a - b)) == pytest.approx(far, rel=1e-6)
            others = [d for d in dots if not (np.allclose(d, a) or np.allclose(d, b))]
            nearest = min(min(np.hypot(*(d - a)), np.hypot(*(d - b))) for d in others)
            assert nearest == pytest.approx(near, rel=1e-6) and nearest < np.hypot(*(a - b))


def test_continuity_labels_follow_each_curve():
    for i in SEEDS:
        s = stimulus("continuity", i, SIZE)
        ink = is_ink(s.image)
        assert set(np.unique(s.labels)) == {0, 1, 2}
        spacing, band = s.info["spacing"], s.info["band"]
        for k, (dots, other) in enumerate(zip(s.info["dots"], s.info["curves"][::-1]), start=1):
            steps = np.hypot(*np.diff(dots, axis=0).T)
            assert steps.max() <= spacing * 1.0001 and steps.min() >= 0.85 * spacing  # evenly spaced elements
            for x, y in dots:
                if 0 <= x < SIZE and 0 <= y < SIZE:
                    assert ink[int(y), int(x)]
                    if np.hypot(*(other - [x, y]).T).min() > band:  # away from the crossing
                        assert at(s.labels, x, y) == k
        # the two perceived curves cross: their bands meet
        one, two = s.labels == 1, s.labels == 2
        assert (ndimage.binary_dilation(one) & two).any()


def test_enclosure_separates_identical_dots():
    for i in SEEDS:
        s = stimulus("enclosure", i, SIZE)
        left, top, right, bottom = s.info["box"]
        dot = s.info["dot"]
        assert set(np.unique(s.labels)) == {1, 2}
        inside = [(x, y) for x, y, enclosed in s.info["centres"] if enclosed]
        outside = [(x, y) for x, y, enclosed in s.info["centres"] if not enclosed]
        assert inside and outside
        assert all(at(s.labels, x, y) == 1 for x, y in inside) and all(at(s.labels, x, y) == 2 for x, y in outside)
        assert (s.labels[s.info["outline"]] == 1).all()
        for x, y, _ in s.info["centres"]:  # no dot touches the outline
            gap = min(abs(x - left), abs(x - right), abs(y - top), abs(y - bottom))
            assert gap >= dot + 1
        # identical elements inside and outside: the same ink area (up to pixel phase)
        ink, r = is_ink(s.image), int(math.ceil(dot)) + 1
        areas = np.array([ink[int(y) - r : int(y) + r + 1, int(x) - r : int(x) + r + 1].sum() for x, y, _ in s.info["centres"]])
        assert areas.min() >= 0.8 * areas.max() and areas.min() >= 0.8 * math.pi * dot**2


def test_proximity_groups_are_separated_by_larger_gaps():
    for i in SEEDS:
        s = stimulus("proximity", i, SIZE)
        dots = np.array(s.info["dots"])
        groups = np.unique(dots[:, 2]).astype(int)
        assert len(groups) >= 2 and set(np.unique(s.labels)) == {0, *groups}
        for x, y, g in dots:
            assert at(s.labels, x, y) == g
        within_nn = []
        for g in groups:
            members = dots[dots[:, 2] == g][:, :2]
            d = np.hypot(*(members[:, None] - members[None]).transpose(2, 0, 1))
            np.fill_diagonal(d, np.inf)
            within_nn.append(d.min(axis=1).max())
        between = min(
            np.hypot(*(dots[dots[:, 2] == g][:, None, :2] - dots[dots[:, 2] == h][None, :, :2]).transpose(2, 0, 1)).min()
            for g in groups for h in groups if g < h
        )
        assert between > 1.5 * max(within_nn)
        for g in groups:  # each group's region is one block, apart from the others
            assert components(s.labels == g) == 1


def test_similarity_groups_alike_elements_however_far_apart():
    for i in SEEDS:
        s = stimulus("similarity", i, SIZE)
        elements, spacing = s.info["elements"], s.info["spacing"]
        assert set(np.unique(s.labels[s.labels > 0])) == {1, 2}
        ink = is_ink(s.image)
        ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5
        looks: dict[int, set] = {}
        for x, y, kind in elements:
            assert at(s.labels, x, y) == kind
            # an element's look: its colour, and whether its ink is closer to a disk or a square
            near = (np.abs(xs - x) <= 0.45 * spacing) & (np.abs(ys - y) <= 0.45 * spacing)
            disk = np.hypot(xs - x, ys - y) <= 0.3 * spacing
            square = np.maximum(np.abs(xs - x), np.abs(ys - y)) <= 0.255 * spacing
            iou = {name: (ink & m & near).sum() / ((ink | m) & near).sum() for name, m in (("disk", disk), ("square", square))}
            looks.setdefault(kind, set()).add((tuple(int(v) for v in s.image[int(y), int(x)]), max(iou, key=iou.get)))
        assert len(looks[1]) == 1 and len(looks[2]) == 1 and looks[1] != looks[2]  # alike within, unlike across
        xy = np.array([(x, y) for x, y, _ in elements])
        kinds = np.array([k for _, _, k in elements])
        d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
        np.fill_diagonal(d, np.inf)
        assert np.allclose(d.min(axis=1), spacing)  # even spacing: proximity gives no cue
        same = d[(kinds[:, None] == kinds[None]) & np.isfinite(d)]
        differ = d[kinds[:, None] != kinds[None]]
        assert same.max() > differ.min()  # alike elements far apart still group


@pytest.mark.parametrize("principle", ["closure", "kanizsa", "continuity", "enclosure", "similarity"])
def test_perfect_features_score_one(principle):
    from harness.metrics import segmentation_r2

    s = stimulus(principle, 0, 112)
    features = np.eye(3)[np.clip(s.labels, 0, 2)]  # features that are the perceived segmentation
    assert segmentation_r2(features, s.labels) == pytest.approx(1.0)
    assert segmentation_r2(features, s.labels, mean="per_component") == pytest.approx(1.0)


def test_paper_numbers_are_table_4():
    from harness_plugins.tasks.gestalt import GestaltTask

    table = GestaltTask.paper_numbers()
    assert len(table) == 63 and set(table.dataset) == set(PRINCIPLES) and set(table.metric) == {"r2"}
    lookup = {(r.paper_row, r.dataset): r.value for r in table.itertuples()}
    assert lookup[("S. KML", "enclosure")] == 64.8
    assert lookup[("RGB", "similarity")] == 73.4
    assert lookup[("Random init.", "closure")] == 0.9
    assert lookup[("StyleGAN", "continuity")] == 46.3


def test_gestalt_runs_into_a_table_4_leaderboard(tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text("tasks:\n  gestalt: {plugin: gestalt, params: {images: 3, size: 96, figure_images: 1}}\n")
    out = tmp_path / "out"
    result = cli("--registry", str(registry), "run", "--encoders", "rgb,random-init", "--tasks", "gestalt", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    headline = [r for r in records if r["headline"]]
    assert {(r["encoder"], r["dataset"]) for r in headline} == {(e, p) for e in ("rgb", "random-init") for p in PRINCIPLES}
    for r in records:
        assert r["status"] == "ok" and r["metric"] == "r2"
        assert r["params"]["mean"] in ("scalar", "per_component") and r["n"] <= 3
        assert r["value"] is None or math.isnan(r["value"]) or 0.0 <= r["value"] <= 100.0
    board = (out / "LEADERBOARD.md").read_text()
    section = board[board.index("## gestalt:") :]
    header = next(line for line in section.splitlines() if line.startswith("| group"))
    columns = [c.strip() for c in header.split("|")[3:-1]]
    assert [c for c in columns if c != "paper"] == sorted(PRINCIPLES) and columns.count("paper") == 7
    random_row = next(line for line in section.splitlines() if "| random-init" in line)
    assert "17.6" in random_row  # the paper's connection number for the random-init row
    for principle in PRINCIPLES:
        figure = out / "figures" / f"gestalt_{principle}.png"
        assert figure.stat().st_size > 1000 and f"figures/gestalt_{principle}.png" in section
        parts = out / "figures" / "pca" / "gestalt" / principle
        assert (parts / "rgb" / f"{principle}-0.png").is_file() and (parts / "random-init" / f"{principle}-0.png").is_file()


def test_tasks_resolve_through_the_api():
    import harness

    from harness.kinds import ParamsError

    task = harness.get_task("gestalt", images=2)
    assert task.datasets == list(PRINCIPLES) and task.needs_patches and task.params.images == 2
    assert harness.get_task("gestalt", datasets=["closure"]).datasets == ["closure"]
    with pytest.raises(ParamsError, match="datasets"):
        harness.get_task("gestalt", datasets=["closur"])  # only the seven principles
    with pytest.raises(ParamsError, match="images"):
        harness.get_task("gestalt", images=0)
    for name in ("coco-r2", "knn-seg", "incontext-seg"):
        assert harness.get_task(name).needs_patches
