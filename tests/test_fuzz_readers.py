"""Property-based tests of the NIGHTS CSV reader, the image-table reader and the
MedMNIST .npz reader.

Whatever the file holds (columns dropped, cells replaced by random values, arrays of
random shapes and dtypes, bytes flipped, the file cut short), the reader either returns
splits that are consistent (lengths agree, labels in range, images uint8 [n, 3, S, S])
or raises DataFormatError naming the file. No other exception escapes.
"""

from __future__ import annotations

import io

import numpy as np
import pandas
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from harness.datasets import open_dataset
from harness.datasets.medmnist import MEDMNIST_KEYS
from harness.datasets.nights import NIGHTS_COLUMNS, NIGHTS_SPLITS
from harness.errors import DataFormatError
from test_datasets import make_medmnist, make_nights, spec

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def damaged(raw: bytes, flips: list[tuple[float, int]], cut: float | None) -> bytes:
    """`raw` with the byte at each fraction of its length set, then cut at `cut` of it."""
    data = bytearray(raw)
    for where, byte in flips:
        data[int(where * len(data))] = byte
    return bytes(data if cut is None else data[: int(cut * len(data))])


# -------------------------------------------------------------------------- NIGHTS
@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """A NIGHTS tree; each example rewrites its data.csv. Returns (root, table as text, bytes)."""
    root = tmp_path_factory.mktemp("nights")
    make_nights(root)
    csv = root / "data.csv"
    return root, pandas.read_csv(csv, dtype=str, keep_default_na=False), csv.read_bytes()


def read_nights(root):
    """Open the dataset and decode every image; returns the data or the DataFormatError."""
    try:
        data = open_dataset("nights", spec("nights", root, size=8, workers=2))
    except DataFormatError as exc:
        assert str(exc).startswith(f"{root / 'data.csv'}: "), str(exc)
        event("refused: data.csv")
        return exc
    check_nights(data)
    for triplets in data.splits.values():
        for side in (triplets.ref, triplets.left, triplets.right):
            try:
                images = side.take(range(len(side))) if len(side) else None
            except DataFormatError as exc:  # a path that is not an image names it and its row
                assert "(data.csv row " in str(exc), str(exc)
                event("refused: an image path")
                return exc
            assert images is None or tuple(images.shape) == (len(side), 3, 8, 8)
    event("read")
    return data


def check_nights(data):
    assert set(data.splits) == set(NIGHTS_SPLITS)
    seen = []
    for name, triplets in data.splits.items():
        n = len(triplets)
        assert len(triplets.ref) == len(triplets.left) == len(triplets.right) == n
        assert len(triplets.ids) == len(triplets.is_imagenet) == len(triplets.rows) == len(triplets.p) == n
        assert np.isfinite(triplets.p).all() and ((triplets.p >= 0) & (triplets.p <= 1)).all(), triplets.p
        if name.startswith("test"):
            assert (triplets.is_imagenet == (name == "test_imagenet")).all()
        seen.extend(triplets.rows.tolist())
    assert len(seen) == len(set(seen)) and all(row >= 2 for row in seen)  # each CSV row in one split at most


@settings(FUZZ, max_examples=30)
@given(dropped=st.sets(st.sampled_from([*NIGHTS_COLUMNS, "prompt"])))
def test_nights_with_columns_dropped(nights, dropped):
    root, table, _ = nights
    table.drop(columns=sorted(dropped)).to_csv(root / "data.csv", index=False)
    result = read_nights(root)
    missing = [c for c in NIGHTS_COLUMNS if c in dropped]
    if missing and len(dropped) < len(table.columns):
        assert isinstance(result, DataFormatError) and f"missing column(s) {missing}" in str(result)
    elif not missing:
        assert not isinstance(result, DataFormatError), result


CELL_VALUES = st.one_of(
    st.sampled_from(["", " ", "nan", "inf", "-inf", "-1", "0", "1", "0.5", "1e308", "1e-320", "6", "7",
                     "True", "false", "yes", "maybe", "train", "val", "test", " test ", "TEST", "\"", ",", "\n",
                     "ref/000/000.png", "distort/000/001_1.png", "ref/000", "../data.csv", "/", "ref/999/999.png"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-3, 12).map(str),
    st.text(max_size=6),
)


@settings(FUZZ, max_examples=70)
@given(data=st.data())
def test_nights_with_random_cell_values(nights, data):
    root, table, _ = nights
    table = table.copy()
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(table) - 1), st.sampled_from(list(table.columns)), CELL_VALUES),
                               min_size=1, max_size=4))
    for row, column, value in edits:
        table.loc[row, column] = value
    table.to_csv(root / "data.csv", index=False)
    read_nights(root)


@settings(FUZZ, max_examples=50)
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=4),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_nights_with_bytes_flipped_or_cut(nights, flips, cut):
    root, _, raw = nights
    (root / "data.csv").write_bytes(damaged(raw, flips, cut))
    read_nights(root)


# -------------------------------------------------------------------- image tables
@pytest.fixture(scope="module")
def image_table(tmp_path_factory):
    """Six images in two classes and labels.csv listing them, each class also as a 0/1
    column. Returns (root, table bytes)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("table")
    lines = ["image,label,split,a,b"]
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / f"{i}.png")
        lines.append(f"{i}.png,{'ab'[i % 2]},{'train' if i < 4 else 'test'},{1 - i % 2},{i % 2}")
    return root, ("\n".join(lines) + "\n").encode()


@settings(FUZZ, max_examples=60)
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.floats(0, 1)), delimiter=st.sampled_from([None, ";", " "]),
       labels=st.sampled_from([{}, {"label_columns": ["a", "b"]}, {"label_columns": ["a", "b"], "multi_label": True}]))
def test_table_with_bytes_flipped_or_cut(image_table, flips, cut, delimiter, labels):
    root, raw = image_table
    (root / "labels.csv").write_bytes(damaged(raw, flips, cut))
    try:
        table = open_dataset("t", spec("table", root, crop=8, resize=8, workers=2, delimiter=delimiter, **labels))
        for split in table.splits.values():
            images = split.take(range(len(split)))
            assert tuple(images.shape) == (len(split), 3, 8, 8) and images.dtype == torch.uint8
            if labels.get("multi_label"):
                assert split.labels.shape == (len(split), 2) and set(split.labels.ravel().tolist()) <= {0, 1}
            else:
                assert 0 <= split.labels.min() and split.labels.max() < table.num_classes
    except DataFormatError as exc:  # the table, or an image with the table line that lists it
        assert str(exc).startswith((f"{root / 'labels.csv'}: ", f"dataset 't': ")) or f"{root / 'labels.csv'}: line " in str(exc), str(exc)
        event("refused")
        return
    event("read")


@settings(FUZZ, max_examples=25)
@given(noise=st.lists(st.floats(-5e-6, 5e-6), min_size=1, max_size=6))
def test_nights_vote_fractions_with_rounding_keep_p_in_range(nights, noise):
    """Vote fractions as released sum to 1 up to rounding; p stays a probability."""
    root, table, _ = nights
    table = table.copy()
    right = table["right_vote"].astype(float).to_numpy().copy()
    for i, eps in enumerate(noise):
        right[i] = right[i] + eps
    table["right_vote"] = [repr(float(v)) for v in right]
    table.to_csv(root / "data.csv", index=False)
    result = read_nights(root)
    if (right >= 0).all():
        assert not isinstance(result, DataFormatError), result


# ------------------------------------------------------------------------ MedMNIST
def read_medmnist(path, name="toy"):
    """Open the file and stream every split; returns the data or the DataFormatError."""
    try:
        data = open_dataset(name, spec("medmnist", path))
        check_medmnist(data)
    except DataFormatError as exc:
        assert str(exc).startswith(f"{path}: "), str(exc)
        event("refused")
        return exc
    event(f"read ({data.label_type})")
    return data


def check_medmnist(data):
    assert set(data.splits) == {"train", "val", "test"}
    assert data.train is data.splits["train"] and data.test is data.splits["test"]
    assert data.num_classes >= 1
    for split in data.splits.values():
        labels = np.asarray(split.labels)
        assert len(split) == len(labels)
        if data.label_type == "multi-label, binary-class":
            assert labels.ndim == 2 and labels.shape[1] == data.num_classes and np.isin(labels, [0, 1]).all()
        else:
            assert labels.ndim == 1 and ((labels >= 0) & (labels < data.num_classes)).all(), (labels, data.num_classes)
        batches = [b.numpy() for b in split.batches(4)]  # raises DataFormatError on damaged rows
        size = split.image_size
        images = np.concatenate(batches) if batches else np.zeros((0, 3, size, size), np.uint8)
        assert images.dtype == np.uint8 and images.shape == (len(split), 3, size, size) and size >= 1
        if len(split):
            assert np.array_equal(split.take([len(split) - 1]).numpy(), images[-1:])


@pytest.fixture(scope="module")
def medmnist_arrays(tmp_path_factory):
    return make_medmnist(tmp_path_factory.mktemp("medmnist") / "toy.npz", n=(8, 3, 5), size=4)


@settings(FUZZ, max_examples=30)
@given(dropped=st.sets(st.sampled_from(MEDMNIST_KEYS)))
def test_medmnist_with_keys_dropped(tmp_path, medmnist_arrays, dropped):
    path = tmp_path / "toy.npz"
    np.savez(path, **{k: v for k, v in medmnist_arrays.items() if k not in dropped})
    result = read_medmnist(path)
    if dropped:
        first = next(k for k in MEDMNIST_KEYS if k in dropped)
        assert isinstance(result, DataFormatError) and f"missing key {first!r}" in str(result)
    else:
        assert not isinstance(result, DataFormatError), result


DTYPES = st.sampled_from([np.uint8, np.int8, np.uint16, np.int64, np.float32, np.float64, np.bool_, np.complex64, "<U2"])


@st.composite
def medmnist_file(draw):
    """Arrays per key: mostly near-valid (random N, S, channels, label widths, values),
    some replaced by arrays of any shape and dtype."""
    size = draw(st.integers(1, 5))
    rgb = draw(st.booleans())
    width = draw(st.sampled_from([1, 1, 1, 2, 3]))
    arrays = {}
    for split in ("train", "val", "test"):
        n = draw(st.integers(0, 6))
        shape = (n, size, size, 3) if rgb else (n, size, size)
        arrays[f"{split}_images"] = draw(hnp.arrays(np.uint8, shape))
        label_rows = n if draw(st.integers(0, 11)) else draw(st.integers(0, 6))
        label_shape = draw(st.sampled_from([(label_rows, width), (label_rows,)] if width == 1 else [(label_rows, width)]))
        label_dtype = draw(st.sampled_from([np.uint8, np.int64, np.float32]))
        low = -1 if draw(st.integers(0, 7)) == 0 else 0
        high = draw(st.sampled_from([1, 1, 4])) if width == 1 else draw(st.sampled_from([1, 1, 1, 2]))
        values = draw(hnp.arrays(np.int64, label_shape, elements=st.integers(low, high)))
        arrays[f"{split}_labels"] = values.astype(label_dtype)
    replaced = draw(st.sets(st.sampled_from(MEDMNIST_KEYS), max_size=2)) if draw(st.booleans()) else set()
    for key in sorted(replaced):
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
        arrays[key] = draw(hnp.arrays(DTYPES, shape))
    if draw(st.booleans()):
        arrays["train_images"] = np.asfortranarray(arrays["train_images"])
    return arrays


@settings(FUZZ, max_examples=120)
@given(arrays=medmnist_file(), name=st.sampled_from(["toymnist", "pneumoniamnist", "chestmnist", "pathmnist"]),
       compressed=st.booleans())
def test_medmnist_with_random_shapes_and_dtypes(tmp_path, arrays, name, compressed):
    path = tmp_path / f"{name}.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    read_medmnist(path, name)


@settings(FUZZ, max_examples=80)
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.floats(0, 1, exclude_max=True)), compressed=st.booleans())
def test_medmnist_with_bytes_flipped_or_cut(tmp_path, medmnist_arrays, flips, cut, compressed):
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **medmnist_arrays)
    data = damaged(buffer.getvalue(), flips, cut)
    assume(data != buffer.getvalue())
    path = tmp_path / "toy.npz"
    path.write_bytes(bytes(data))
    read_medmnist(path)
