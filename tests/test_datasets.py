"""Dataset readers: each published layout, built small under tmp_path, read back exactly.

The builders here (`make_*`) are shared with tests/test_tasks.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from harness.config.loading import load_plugins
from harness.config.schema import DatasetSpec
from harness.config.registry import load_registry
from harness.datasets import ArraySplit, ImageFileSplit, open_dataset
from harness.datasets.bundled import texture_patches
from harness.datasets.medmnist import NpzImageSplit
from harness.errors import DataFormatError, DatasetUnavailable, HarnessError, PluginError, UnknownNameError

CLASS_COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])


# ------------------------------------------------------------------------ builders
def write_image(path, rng, label=0, size=None):
    """A small image: the class colour plus noise, of a random size unless given (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size or (int(rng.integers(18, 31)), int(rng.integers(18, 31)))
    noise = rng.integers(-60, 61, size=(height, width, 3))
    pixels = np.clip(CLASS_COLOURS[label % len(CLASS_COLOURS)] + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_imagefolder(root, classes=("cat", "dog", "owl"), n_train=6, n_test=3, test_dir="test", seed=0):
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), (test_dir, n_test)):
        for label, cls in enumerate(classes):
            for i in range(count):
                suffix = ".jpg" if i == 0 else ".png"
                write_image(root / split / cls / f"{cls}_{i:02d}{suffix}", rng, label)
    (root / "train" / classes[0] / "README.txt").write_text("not an image")
    return root


def make_flowers(root, n_per_class=6, classes=3, seed=0):
    """torchvision's Flowers-102 layout under root/flowers-102; returns (labels, setid)."""
    import scipy.io

    rng = np.random.default_rng(seed)
    base = root / "flowers-102"
    labels = np.repeat(np.arange(1, classes + 1), n_per_class)
    rng.shuffle(labels)
    for i, label in enumerate(labels, 1):
        write_image(base / "jpg" / f"image_{i:05d}.jpg", rng, int(label) - 1)
    ids = np.arange(1, len(labels) + 1)
    setid = {"trnid": ids[0::3], "valid": ids[1::3], "tstid": ids[2::3]}
    scipy.io.savemat(base / "imagelabels.mat", {"labels": labels[None, :].astype(np.uint8)})
    scipy.io.savemat(base / "setid.mat", {k: v[None, :].astype(np.uint16) for k, v in setid.items()})
    return labels, setid


def make_cub(root, classes=("001.Albatross", "002.Auklet", "003.Blackbird"), n_per_class=5, seed=0):
    """CUB_200_2011 layout under root/CUB_200_2011; returns {image_id: (path, class_id, is_train)}."""
    rng = np.random.default_rng(seed)
    base = root / "CUB_200_2011"
    entries = {}
    image_id = 0
    for class_id, cls in enumerate(classes, 1):
        for i in range(n_per_class):
            image_id += 1
            rel = f"{cls}/{cls.split('.')[1]}_{i:04d}.jpg"
            write_image(base / "images" / rel, rng, class_id - 1)
            entries[image_id] = (rel, class_id, int(i % 2 == 0))
    order = list(entries)
    rng.shuffle(order)  # files list images in any order; ids decide
    (base / "images.txt").write_text("".join(f"{k} {entries[k][0]}\n" for k in order))
    (base / "image_class_labels.txt").write_text("".join(f"{k} {entries[k][1]}\n" for k in entries))
    (base / "train_test_split.txt").write_text("".join(f"{k} {entries[k][2]}\n" for k in entries))
    (base / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    return entries


def make_food(root, classes=("apple_pie", "bibimbap", "churros"), n_train=4, n_test=2, seed=0):
    rng = np.random.default_rng(seed)
    base = root / "food-101"
    lines = {"train": [], "test": []}
    for label, cls in enumerate(classes):
        for i in range(n_train + n_test):
            image_id = str(100000 + 7 * i + label)
            write_image(base / "images" / cls / f"{image_id}.jpg", rng, label)
            lines["train" if i < n_train else "test"].append(f"{cls}/{image_id}")
    (base / "meta").mkdir(parents=True)
    for split, rows in lines.items():
        (base / "meta" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    (base / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    return lines


def make_medmnist(path, n=(30, 9, 15), classes=3, size=8, rgb=False, multilabel=0, seed=0):
    """A MedMNIST-style .npz whose images carry their class in their brightness."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        if multilabel:
            labels = rng.integers(0, 2, size=(count, multilabel)).astype(np.uint8)
            level = labels @ (np.arange(multilabel) + 1) * (200 // (multilabel * (multilabel + 1) // 2))
        else:
            labels = (np.arange(count) % classes)[:, None].astype(np.uint8)
            rng.shuffle(labels)
            level = labels[:, 0].astype(np.int64) * (200 // max(classes - 1, 1))
        shape = (count, size, size, 3) if rgb else (count, size, size)
        noise = rng.integers(0, 80, size=shape)
        base = level.reshape((count,) + (1,) * (len(shape) - 1))
        arrays[f"{split}_images"] = np.clip(base + noise, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return arrays


NIGHTS_ROWS = [
    # split, is_imagenet, votes, right_vote
    *[("val", True, 6, r) for r in (0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 5 / 6, 1 / 6)],
    ("val", False, 5, 1.0),  # too few votes: dropped
    *[("test", True, 7, r) for r in (1.0, 0.0, 0.0, 1.0, 6 / 7)],
    *[("test", False, 6, r) for r in (0.0, 1.0, 1.0)],
    ("test", False, 4, 0.0),  # dropped
    *[("train", False, 6, r) for r in (1.0, 0.0)],
]


def make_nights(root, rows=NIGHTS_ROWS, seed=0):
    """The NIGHTS tree (ref/NNN/MMM.png, distort/NNN/MMM_{0,1}.png) and its data.csv."""
    import pandas

    rng = np.random.default_rng(seed)
    records = []
    for i, (split, is_imagenet, votes, right) in enumerate(rows):
        folder, name = f"{i // 10:03d}", f"{i % 10:03d}"
        label = int(rng.integers(0, 4))
        ref = write_image(root / "ref" / folder / f"{name}.png", rng, label, size=(30, 26))
        # one distortion close to the reference's class colour, one further away
        write_image(root / "distort" / folder / f"{name}_0.png", rng, label if i % 2 else label + 1, size=(28, 28))
        write_image(root / "distort" / folder / f"{name}_1.png", rng, label + 1 if i % 2 else label, size=(26, 30))
        records.append({
            "id": i, "left_vote": 1.0 - right, "right_vote": right, "votes": votes,
            "ref_path": ref.relative_to(root).as_posix(),
            "left_path": f"distort/{folder}/{name}_0.png", "right_path": f"distort/{folder}/{name}_1.png",
            "split": split, "is_imagenet": is_imagenet, "prompt": "an image of a thing",
        })
    pandas.DataFrame(records).to_csv(root / "data.csv", index=False)
    return records


def protocol_crop(path, crop, resize):
    """Resize the shorter side to `resize` (bicubic), centre-crop `crop`, by hand with PIL."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    if width <= height:
        new = (resize, int(resize * height / width))
    else:
        new = (int(resize * width / height), resize)
    image = image.resize(new, Image.BICUBIC)
    left, top = int(round((new[0] - crop) / 2.0)), int(round((new[1] - crop) / 2.0))
    return np.asarray(image.crop((left, top, left + crop, top + crop))).transpose(2, 0, 1)


def spec(fmt, root=None, **options):
    return DatasetSpec(format=fmt, root=None if root is None else str(root), options=options)


def all_images(split, batch_size=4):
    return np.concatenate([b.numpy() for b in split.batches(batch_size)])


# --------------------------------------------------------------------- image files
def test_imagefolder_streams_the_protocol_preprocessing(tmp_path):
    root = make_imagefolder(tmp_path / "folder")
    data = open_dataset("mine", spec("imagefolder", root, crop=16))
    assert data.classes == ["cat", "dog", "owl"]
    assert isinstance(data.train, ImageFileSplit) and len(data.train) == 18 and len(data.test) == 9
    assert data.train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert all(p.suffix in (".png", ".jpg") for p in data.train.paths)  # README.txt ignored
    batches = list(data.train.batches(5))
    assert [len(b) for b in batches] == [5, 5, 5, 3]
    assert all(b.dtype.is_floating_point is False and tuple(b.shape[1:]) == (3, 16, 16) for b in batches)
    expected = np.stack([protocol_crop(p, 16, round(16 * 256 / 224)) for p in data.train.paths])
    assert np.array_equal(np.concatenate([b.numpy() for b in batches]), expected)
    assert np.array_equal(data.train.take([4, 0]).numpy(), expected[[4, 0]])


def test_default_preprocessing_is_resize_256_crop_224(tmp_path):
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        write_image(tmp_path / split / "a" / "x.png", rng, 0, size=(300, 260))
    data = open_dataset("imagenet", spec("imagenet", tmp_path))
    image = data.test.take([0]).numpy()[0]
    assert image.shape == (3, 224, 224)
    assert np.array_equal(image, protocol_crop(tmp_path / "val" / "a" / "x.png", 224, 256))


def test_imagenet_reads_train_and_val(tmp_path):
    root = make_imagefolder(tmp_path / "imagenet", classes=("n01440764", "n01443537"), test_dir="val")
    data = open_dataset("imagenet", spec("imagenet", root, crop=8))
    assert data.classes == ["n01440764", "n01443537"]
    assert len(data.train) == 12 and len(data.test) == 6
    assert all_images(data.test).shape == (6, 3, 8, 8)


def test_flowers102_memory_is_train_queries_are_val_or_test(tmp_path):
    labels, setid = make_flowers(tmp_path)
    data = open_dataset("flowers102", spec("flowers102", tmp_path, crop=16))
    assert data.num_classes == 3
    assert [p.name for p in data.train.paths] == [f"image_{i:05d}.jpg" for i in setid["trnid"]]
    assert data.train.labels.tolist() == (labels[setid["trnid"] - 1] - 1).tolist()
    assert data.test.labels.tolist() == (labels[setid["valid"] - 1] - 1).tolist()
    assert set(data.splits) == {"train", "val", "test"}
    official = open_dataset("flowers102", spec("flowers102", tmp_path / "flowers-102", crop=16, test_split="test"))
    assert [p.name for p in official.test.paths] == [f"image_{i:05d}.jpg" for i in setid["tstid"]]
    assert all_images(official.test).shape == (len(setid["tstid"]), 3, 16, 16)


def test_cub200_uses_the_official_split_file(tmp_path):
    entries = make_cub(tmp_path)
    data = open_dataset("cub200", spec("cub200", tmp_path, crop=16))
    assert data.classes == ["001.Albatross", "002.Auklet", "003.Blackbird"]
    train_ids = [k for k in sorted(entries) if entries[k][2] == 1]
    test_ids = [k for k in sorted(entries) if entries[k][2] == 0]
    assert [p.as_posix().split("images/")[1] for p in data.train.paths] == [entries[k][0] for k in train_ids]
    assert data.train.labels.tolist() == [entries[k][1] - 1 for k in train_ids]
    assert data.test.labels.tolist() == [entries[k][1] - 1 for k in test_ids]
    assert all_images(data.test).shape == (len(test_ids), 3, 16, 16)


def test_food101_reads_meta_lists(tmp_path):
    lines = make_food(tmp_path)
    data = open_dataset("food101", spec("food101", tmp_path, crop=12))
    assert data.classes == ["apple_pie", "bibimbap", "churros"]
    assert [f"{p.parent.name}/{p.stem}" for p in data.train.paths] == lines["train"]
    assert data.test.labels.tolist() == [data.classes.index(x.split("/")[0]) for x in lines["test"]]
    assert all_images(data.train).shape == (12, 3, 12, 12)


# ------------------------------------------------------------------------ MedMNIST
@pytest.mark.parametrize("rgb", [False, True])
def test_medmnist_npz_is_streamed_as_rgb_uint8(tmp_path, rgb):
    arrays = make_medmnist(tmp_path / "toymnist_64.npz", rgb=rgb, size=6)
    data = open_dataset("toymnist", spec("medmnist", tmp_path, size=64))  # a directory root: <flag>_<size>.npz
    assert isinstance(data.train, NpzImageSplit) and data.label_type == "multi-class" and data.num_classes == 3
    assert data.train.labels.tolist() == arrays["train_labels"][:, 0].tolist()
    images = all_images(data.test, batch_size=4)
    expected = arrays["test_images"].transpose(0, 3, 1, 2) if rgb else np.repeat(arrays["test_images"][:, None], 3, axis=1)
    assert images.dtype == np.uint8 and np.array_equal(images, expected)
    assert np.array_equal(data.test.take([3, 1]).numpy(), expected[[3, 1]])
    assert len(data.splits["val"]) == 9


def test_medmnist_label_types(tmp_path):
    make_medmnist(tmp_path / "pneumoniamnist.npz", classes=2)
    binary = open_dataset("pneu", spec("medmnist", tmp_path / "pneumoniamnist.npz"))
    assert binary.label_type == "binary-class" and binary.classes == ["0", "1"]
    arrays = make_medmnist(tmp_path / "chestmnist_28.npz", multilabel=4)
    multi = open_dataset("chest", spec("medmnist", tmp_path / "chestmnist_28.npz"))
    assert multi.label_type == "multi-label, binary-class" and multi.num_classes == 4
    assert np.array_equal(multi.train.labels, arrays["train_labels"])
    by_folder = open_dataset("chest", spec("medmnist", tmp_path, flag="chestmnist", size=28))  # `<flag>_28.npz` is 28 px too
    assert np.array_equal(by_folder.train.labels, arrays["train_labels"])


def test_medmnist_real_file(shared_data):
    path = shared_data / "medmnist" / "breastmnist.npz"
    data = open_dataset("breastmnist", spec("medmnist", path))
    assert (len(data.train), len(data.splits["val"]), len(data.test)) == (546, 78, 156)
    assert data.label_type == "binary-class"
    with np.load(path) as raw:
        assert np.array_equal(all_images(data.test, 64)[:, 1], raw["test_images"])


# -------------------------------------------------------------------------- NIGHTS
def test_nights_filters_votes_and_splits_test_by_imagenet(tmp_path):
    records = make_nights(tmp_path)
    data = open_dataset("nights", spec("nights", tmp_path, size=24))
    kept = [r for r in records if r["votes"] >= 6]
    assert {s: len(t) for s, t in data.splits.items()} == {"train": 2, "val": 8, "test_imagenet": 5, "test_no_imagenet": 3}
    val = [r for r in kept if r["split"] == "val"]
    assert data.splits["val"].ids.tolist() == [r["id"] for r in val]
    assert np.allclose(data.splits["val"].p, [r["right_vote"] for r in val])
    assert data.splits["test_imagenet"].is_imagenet.all() and not data.splits["test_no_imagenet"].is_imagenet.any()
    ref = data.splits["val"].ref
    image = ref.take([0]).numpy()[0]
    expected = np.asarray(Image.open(tmp_path / val[0]["ref_path"]).convert("RGB").resize((24, 24), Image.BICUBIC)).transpose(2, 0, 1)
    assert image.shape == (3, 24, 24) and np.array_equal(image, expected)  # squashed, not cropped


def test_nights_vote_counts_become_fractions(tmp_path):
    import pandas

    make_nights(tmp_path)
    table = pandas.read_csv(tmp_path / "data.csv")
    table["left_vote"], table["right_vote"] = table.left_vote * table.votes, table.right_vote * table.votes
    table.to_csv(tmp_path / "data.csv", index=False)
    data = open_dataset("nights", spec("nights", tmp_path))
    assert np.allclose(data.splits["val"].p, [0, 1, 1, 0, 0, 1, 5 / 6, 1 / 6])


# ---------------------------------------------------------------------- bundled data
def test_lfw_faces_fixed_split():
    data = open_dataset("lfw-faces", spec("lfw-faces"))
    assert isinstance(data.train, ArraySplit) and data.classes == ["face", "non-face"]
    assert data.train.images.shape == (100, 3, 25, 25) and data.test.images.shape == (100, 3, 25, 25)
    assert np.bincount(data.test.labels).tolist() == [50, 50]
    again = open_dataset("lfw-faces", spec("lfw-faces"))
    assert np.array_equal(data.test.images, again.test.images)


def test_textures_fixed_split_without_shared_pixels():
    data = open_dataset("textures", spec("textures"))
    assert data.num_classes == 7
    assert data.train.images.shape == (7 * 128, 3, 32, 32) and data.test.images.shape == (7 * 64, 3, 32, 32)
    assert np.bincount(data.test.labels).tolist() == [64] * 7
    assert np.array_equal(data.train.images, open_dataset("textures", spec("textures")).train.images)
    # train crops come from the left two thirds, test crops from the right third
    coords = np.arange(30 * 60).reshape(30, 60)
    photo = np.stack([coords % 60] * 3, axis=-1)
    assert texture_patches(photo, 8, "train")[..., 0].max() < 40 <= texture_patches(photo, 8, "test")[..., 0].min()


# ----------------------------------------------------------------- malformed inputs
def test_missing_root_names_the_registry_key_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWERS102_ROOT", raising=False)
    missing = DatasetSpec(format="flowers102", root=str(tmp_path / "nowhere"), env="FLOWERS102_ROOT")
    with pytest.raises(DatasetUnavailable, match=r"datasets\.flowers102\.root.*FLOWERS102_ROOT"):
        open_dataset("flowers102", missing)
    with pytest.raises(DatasetUnavailable, match=r"datasets\.pathmnist\.root"):
        open_dataset("pathmnist", spec("medmnist", tmp_path))  # directory without pathmnist_224.npz


def test_root_in_env_overrides_registry(tmp_path, monkeypatch):
    make_food(tmp_path / "food")
    monkeypatch.setenv("FOOD101_ROOT", str(tmp_path / "food"))
    data = open_dataset("food101", DatasetSpec(format="food101", root="/nonexistent", env="FOOD101_ROOT"))
    assert len(data.train) == 12


def test_nights_csv_missing_columns(tmp_path):
    import pandas

    make_nights(tmp_path)
    pandas.read_csv(tmp_path / "data.csv").drop(columns=["right_vote", "is_imagenet"]).to_csv(tmp_path / "data.csv", index=False)
    with pytest.raises(DataFormatError, match=r"data\.csv: missing column\(s\) \['right_vote', 'is_imagenet'\]"):
        open_dataset("nights", spec("nights", tmp_path))


def test_nights_csv_bad_value_names_row(tmp_path):
    import pandas

    make_nights(tmp_path)
    table = pandas.read_csv(tmp_path / "data.csv")
    table["votes"] = table["votes"].astype(object)
    table.loc[3, "votes"] = "six"
    table.to_csv(tmp_path / "data.csv", index=False)
    with pytest.raises(DataFormatError, match=r"data\.csv: row 5: column 'votes'"):
        open_dataset("nights", spec("nights", tmp_path))


def test_npz_missing_key_and_bad_rows(tmp_path):
    arrays = make_medmnist(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", **{k: v for k, v in arrays.items() if k != "val_labels"})
    with pytest.raises(DataFormatError, match=r"b\.npz: missing key 'val_labels'"):
        open_dataset("b", spec("medmnist", tmp_path / "b.npz"))
    np.savez(tmp_path / "c.npz", **{**arrays, "test_labels": arrays["test_labels"][:-2]})
    with pytest.raises(DataFormatError, match=r"c\.npz: key 'test_labels' has 13 rows but test_images has 15"):
        open_dataset("c", spec("medmnist", tmp_path / "c.npz"))
    np.savez(tmp_path / "d.npz", **{**arrays, "train_images": arrays["train_images"].astype(np.float32)})
    with pytest.raises(DataFormatError, match=r"d\.npz: key 'train_images' must be uint8"):
        open_dataset("d", spec("medmnist", tmp_path / "d.npz"))
    (tmp_path / "e.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataFormatError, match=r"e\.npz: not a valid \.npz"):
        open_dataset("e", spec("medmnist", tmp_path / "e.npz"))


def test_corrupt_image_names_the_file(tmp_path):
    root = make_imagefolder(tmp_path / "folder")
    bad = root / "test" / "dog" / "dog_01.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    data = open_dataset("mine", spec("imagefolder", root, crop=8))
    with pytest.raises(DataFormatError, match=r"dog_01\.png: cannot decode image"):
        all_images(data.test)


def test_corrupt_image_names_its_listing_row(tmp_path):
    entries = make_cub(tmp_path)
    first_test = min(k for k in entries if entries[k][2] == 0)
    (tmp_path / "CUB_200_2011" / "images" / entries[first_test][0]).write_bytes(b"garbage")
    data = open_dataset("cub200", spec("cub200", tmp_path, crop=8))
    lines = (tmp_path / "CUB_200_2011" / "images.txt").read_text().splitlines()
    line = 1 + [x.split()[0] for x in lines].index(str(first_test))
    with pytest.raises(DataFormatError, match=rf"cannot decode image.*images\.txt line {line}\)"):
        all_images(data.test)


def test_malformed_listing_files(tmp_path):
    make_cub(tmp_path / "cub")
    path = tmp_path / "cub" / "CUB_200_2011" / "train_test_split.txt"
    path.write_text(path.read_text().replace("\n", "\n3 maybe\n", 1))
    with pytest.raises(DataFormatError, match=r"train_test_split\.txt: line 2: is_training_image must be an integer"):
        open_dataset("cub200", spec("cub200", tmp_path / "cub"))
    make_food(tmp_path / "food")
    (tmp_path / "food" / "food-101" / "meta" / "test.txt").write_text("churros/1\nchurros\n")
    with pytest.raises(DataFormatError, match=r"test\.txt: line 2: expected 'class/image_id'"):
        open_dataset("food101", spec("food101", tmp_path / "food"))
    import scipy.io

    make_flowers(tmp_path / "fl")
    scipy.io.savemat(tmp_path / "fl" / "flowers-102" / "setid.mat", {"trnid": np.array([[1, 2]])})
    with pytest.raises(DataFormatError, match=r"setid\.mat: missing key 'valid'"):
        open_dataset("flowers102", spec("flowers102", tmp_path / "fl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match=r"does not hold the CUB_200_2011 layout"):
        open_dataset("cub200", spec("cub200", tmp_path / "empty"))


def test_unknown_option_is_named(tmp_path):
    make_imagefolder(tmp_path)
    with pytest.raises(HarnessError, match=r"datasets\.mine\.options: unknown option\(s\) \['crop_size'\]"):
        open_dataset("mine", spec("imagefolder", tmp_path, crop_size=8))


@pytest.mark.parametrize("option, value", [("crop", "32px"), ("crop", 32.7), ("crop", 0), ("crop", True), ("crop", None), ("crop", float("nan")),
                                           ("resize", "36"), ("resize", -1), ("workers", 1.5), ("workers", "two")])
def test_image_options_must_be_positive_integers(tmp_path, option, value):
    make_imagefolder(tmp_path)
    with pytest.raises(HarnessError, match=rf"datasets\.mine\.options\.{option} must be a positive integer .*got {re.escape(repr(value))}"):
        open_dataset("mine", spec("imagefolder", tmp_path, **{option: value}))


def test_whole_numbers_written_as_floats_are_accepted_as_image_options(tmp_path):
    make_imagefolder(tmp_path)
    data = open_dataset("mine", spec("imagefolder", tmp_path, crop=16.0, resize=18.0, workers=2.0))
    assert all_images(data.test).shape == (9, 3, 16, 16)
    with pytest.raises(HarnessError, match=r"datasets\.mine\.options: need crop <= resize, got crop=16, resize=8"):
        open_dataset("mine", spec("imagefolder", tmp_path, crop=16, resize=8))


# ------------------------------------------------------------- format registration
CORE_FORMATS = {"digits", "lfw-faces", "textures", "imagefolder", "imagenet", "flowers102", "cub200", "food101",
                "medmnist", "nights", "coco", "voc", "ade20k", "synthetic-scenes"}

SOLID_FORMAT_PLUGIN = """
import numpy as np

from harness.datasets import ArraySplit, ClassificationData, dataset_options
from harness.hookspecs import hookimpl


def read_solid(name, spec):
    \"\"\"root/<split>.txt lines `r g b label`, each a solid-colour image.\"\"\"
    options = dataset_options(name, spec, {"size": 4})
    root = spec.resolved_root(name)
    splits = {}
    for split in ("train", "test"):
        rows = np.loadtxt(root / f"{split}.txt", dtype=np.int64, ndmin=2)
        images = np.broadcast_to(rows[:, :3, None, None], (len(rows), 3, options["size"], options["size"]))
        splits[split] = ArraySplit(np.ascontiguousarray(images.astype(np.uint8)), rows[:, 3])
    return ClassificationData(name=name, train=splits["train"], test=splits["test"], classes=["dark", "light"])


@hookimpl
def register_dataset_formats(register):
    register("{format}", read_solid)
"""


def write_format_plugin(folder, module, format_name, monkeypatch):
    """A plugin module in `folder` that registers the solid-colour reader as `format_name`."""
    (folder / f"{module}.py").write_text(SOLID_FORMAT_PLUGIN.replace("{format}", format_name))
    monkeypatch.syspath_prepend(str(folder))


def test_core_formats_are_registered_by_the_core(tmp_path):
    plugins = load_plugins()
    assert CORE_FORMATS <= set(plugins.formats)
    assert {plugins.formats[name].source for name in CORE_FORMATS} == {"core module 'harness.datasets.formats'"}
    with pytest.raises(UnknownNameError, match=r"format of dataset 'x'.*'imagefolders'.*imagefolder"):
        open_dataset("x", spec("imagefolders", tmp_path), plugins.readers())


def test_third_party_format_registers_through_the_hook(tmp_path, monkeypatch):
    write_format_plugin(tmp_path, "solid_colour_format", "solid-colours", monkeypatch)
    (tmp_path / "solid").mkdir()
    (tmp_path / "solid" / "train.txt").write_text("10 20 30 0\n250 240 230 1\n5 5 5 0\n")
    (tmp_path / "solid" / "test.txt").write_text("200 210 220 1\n")
    path = tmp_path / "registry.yaml"
    path.write_text(
        "plugins: [solid_colour_format]\n"
        f"datasets:\n  swatches: {{format: solid-colours, root: {tmp_path / 'solid'}, options: {{size: 3}}}}\n"
    )
    registry = load_registry(path)
    assert registry.plugins.formats["solid-colours"].source == "registry module 'solid_colour_format'"
    assert CORE_FORMATS <= set(registry.plugins.readers())
    data = open_dataset("swatches", registry.dataset("swatches"), registry.plugins.readers())
    assert data.train.labels.tolist() == [0, 1, 0] and data.classes == ["dark", "light"]
    images = all_images(data.train, batch_size=2)
    assert images.shape == (3, 3, 3, 3) and images.dtype == np.uint8
    assert images[1, :, 2, 1].tolist() == [250, 240, 230] and (images[0] == np.array([10, 20, 30])[:, None, None]).all()
    with pytest.raises(UnknownNameError):  # the core's own table alone does not know it
        open_dataset("swatches", registry.dataset("swatches"))


@pytest.mark.parametrize("taken", ["coco", "mine"])
def test_duplicate_format_name_is_refused_naming_both_sources(tmp_path, monkeypatch, taken):
    write_format_plugin(tmp_path, f"first_{taken}_format", "mine", monkeypatch)
    write_format_plugin(tmp_path, f"second_{taken}_format", taken, monkeypatch)
    path = tmp_path / "registry.yaml"
    path.write_text(f"plugins: [first_{taken}_format, second_{taken}_format]\n")
    with pytest.raises(PluginError) as info:
        load_registry(path)
    first = "core module 'harness.datasets.formats'" if taken == "coco" else f"registry module 'first_{taken}_format'"
    assert str(info.value) == (
        f"duplicate dataset format name {taken!r}: registered by {first} and by registry module "
        f"'second_{taken}_format'; rename one of them"
    )
