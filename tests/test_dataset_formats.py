"""The webdataset, huggingface, torchvision and table formats and unlabelled image folders,
each built from scikit-learn's bundled digits and checked pixel for pixel against them."""

from __future__ import annotations

import io
import json
import pickle
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from harness.cli import main
from harness.config.registry import load_registry
from harness.config.schema import DatasetSpec
from harness.datasets import open_dataset
from harness.datasets.webdataset import expand_braces
from harness.errors import DataFormatError, DatasetUnavailable, HarnessError, UnknownNameError
from harness.results.store import ResultStore

PER_CLASS = (6, 3)  # train, test images of each digit


@pytest.fixture(scope="module")
def digits():
    """{split: (uint8 images [n, 8, 8], labels [n])}: the first PER_CLASS images of each digit."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.clip(np.rint(data.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    out = {}
    for split, (skip, take) in {"train": (0, PER_CLASS[0]), "test": (PER_CLASS[0], PER_CLASS[1])}.items():
        rows = np.concatenate([np.flatnonzero(data.target == d)[skip : skip + take] for d in range(10)])
        out[split] = (images[rows], data.target[rows].astype(np.int64))
    return out


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_shards(folder, images, labels, shards=2, broken=None):
    """`folder/part-{0..shards-1}.tar` with samples KEY.png + KEY.cls; `broken` =
    (index, "image" | "label") corrupts that sample's image or leaves out its label."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard, rows in enumerate(np.array_split(np.arange(len(labels)), shards)):
        with tarfile.open(folder / f"part-{shard}.tar", "w") as archive:
            for i in rows:
                key = f"s{i:05d}"
                add_member(archive, f"{key}.png", b"not a png" if broken == (i, "image") else png(images[i]))
                if broken != (i, "label"):
                    add_member(archive, f"{key}.cls", str(labels[i]).encode())


def spec(fmt, root=None, **options):
    return DatasetSpec(format=fmt, root=None if root is None else str(root), options={"crop": 8, "resize": 8, "workers": 2, **options})


def all_images(split):
    return np.concatenate([b.numpy() for b in split.batches(7)]) if len(split) else np.zeros((0, 3, 8, 8), np.uint8)


def assert_digits(data, digits, splits=("train", "test")):
    for split in splits:
        images, labels = digits[split]
        part = getattr(data, split)
        assert part.labels.tolist() == labels.tolist()
        got = all_images(part)
        assert got.shape == (len(labels), 3, 8, 8) and got.dtype == np.uint8
        assert (got == images[:, None]).all()
        assert (part.take([3, 0]).numpy() == images[[3, 0]][:, None]).all()


# -------------------------------------------------------------------- webdataset
def test_brace_expansion():
    assert expand_braces("/d/train-{000008..000010}.tar") == [f"/d/train-0000{i:02d}.tar" for i in (8, 9, 10)]
    assert expand_braces("a{b,c{1..2}}d") == ["abd", "ac1d", "ac2d"]
    assert expand_braces("x-{split}.tar") == ["x-{split}.tar"]


def test_webdataset_split_folders_and_classnames(tmp_path, digits):
    for split, (images, labels) in digits.items():
        write_shards(tmp_path / split, images, labels)
    (tmp_path / "classnames.txt").write_text("\n".join(f"digit {d}" for d in range(10)) + "\n")
    data = open_dataset("wds", spec("webdataset", tmp_path))
    assert_digits(data, digits)
    assert data.classes[3] == "digit 3"


def test_webdataset_brace_patterns(tmp_path, digits):
    for split, (images, labels) in digits.items():
        write_shards(tmp_path / split, images, labels, shards=3)
    splits = {"train": "train/part-{0..2}.tar", "test": str(tmp_path / "test" / "part-{0..2}.tar")}
    assert_digits(open_dataset("wds", spec("webdataset", tmp_path, splits=splits)), digits)
    placeholder = open_dataset("wds", spec("webdataset", str(tmp_path / "{split}" / "part-{0..2}.tar")))
    assert_digits(placeholder, digits, splits=("test",))
    (tmp_path / "train" / "part-2.tar").unlink()
    with pytest.raises(DataFormatError, match=r"1 of 3 shards .* missing.*part-2\.tar"):
        open_dataset("wds", spec("webdataset", tmp_path, splits=splits))
    with pytest.raises(DatasetUnavailable, match="no shard of split 'train'"):
        open_dataset("wds", spec("webdataset", tmp_path, splits={"train": "none-{0..1}.tar", "test": splits["test"]}))


def test_webdataset_bad_rows_name_shard_and_index(tmp_path, digits):
    images, labels = digits["train"]
    write_shards(tmp_path / "train", images, labels, shards=1, broken=(4, "label"))
    write_shards(tmp_path / "test", *digits["test"], shards=1, broken=(5, "image"))
    with pytest.raises(DataFormatError, match=r"part-0\.tar: sample 's00004' \(sample 4 of the shard\) has no label member s00004\.cls"):
        open_dataset("wds", spec("webdataset", tmp_path))
    write_shards(tmp_path / "train", images, labels, shards=1)
    data = open_dataset("wds", spec("webdataset", tmp_path))
    with pytest.raises(DataFormatError, match=r"test/part-0\.tar:s00005\.png: cannot decode image.*sample 5 of the shard"):
        all_images(data.test)
    shard = tmp_path / "train" / "part-0.tar"
    with tarfile.open(shard) as archive:
        cut_at = archive.getmembers()[-2].offset  # a copy that stopped between two members: the last sample's image
    shard.write_bytes(shard.read_bytes()[:cut_at])
    with pytest.raises(DataFormatError, match=rf"part-0\.tar: the shard ends after {2 * len(labels) - 2} members without the tar's end-of-archive blocks: it was cut off"):
        open_dataset("wds", spec("webdataset", tmp_path))


# ------------------------------------------------------------------- huggingface
def hf_dataset(images, labels, as_arrays=False):
    import datasets

    if as_arrays:
        features = datasets.Features({"pixels": datasets.Array2D((8, 8), "uint8"), "digit": datasets.ClassLabel(names=[f"d{i}" for i in range(10)])})
        return datasets.Dataset.from_dict({"pixels": list(images), "digit": labels.tolist()}, features=features)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"d{i}" for i in range(10)])})
    return datasets.Dataset.from_dict({"image": [Image.fromarray(i) for i in images], "label": labels.tolist()}, features=features)


def test_huggingface_save_to_disk(tmp_path, digits):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    datasets.DatasetDict({s: hf_dataset(*digits[s]) for s in digits}).save_to_disk(str(tmp_path / "dd"))
    data = open_dataset("hf", spec("huggingface", tmp_path / "dd"))
    assert_digits(data, digits)
    assert data.classes == [f"d{i}" for i in range(10)]


def test_huggingface_parquet_with_array_column_and_split_names(tmp_path, digits):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    (tmp_path / "data").mkdir()
    hf_dataset(*digits["train"], as_arrays=True).to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    hf_dataset(*digits["test"], as_arrays=True).to_parquet(str(tmp_path / "data" / "validation-00000-of-00001.parquet"))
    data = open_dataset("hf", spec("huggingface", tmp_path, image_column="pixels", label_column="digit", test_split="validation"))
    assert_digits(data, digits)
    assert data.classes[9] == "d9"
    with pytest.raises(DataFormatError, match=r"train-00000-of-00001\.parquet: no column 'image', 'label' \(columns: pixels, digit\)"):
        open_dataset("hf", spec("huggingface", tmp_path, test_split="validation"))


def test_huggingface_split_files_are_the_splits_own(tmp_path, digits):
    """`test_ood-*` beside `test-*` is another split; `train_0.parquet` and a folder `test/`
    are the split's; one split's files in two configurations' folders are an error."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    (tmp_path / "one" / "data").mkdir(parents=True)
    hf_dataset(*digits["train"]).to_parquet(str(tmp_path / "one" / "data" / "train_0.parquet"))
    hf_dataset(*digits["test"]).to_parquet(str(tmp_path / "one" / "data" / "test-00000-of-00001.parquet"))
    hf_dataset(*digits["train"]).to_parquet(str(tmp_path / "one" / "data" / "test_ood-00000-of-00001.parquet"))
    hf_dataset(*digits["train"]).to_parquet(str(tmp_path / "one" / "data" / "training_extra.parquet"))
    assert_digits(open_dataset("hf", spec("huggingface", tmp_path / "one")), digits)
    for config in ("160px", "320px"):
        for split in digits:
            (tmp_path / "two" / config / split).mkdir(parents=True)
            hf_dataset(*digits[split]).to_parquet(str(tmp_path / "two" / config / split / "0.parquet"))
    with pytest.raises(DataFormatError, match=r"split 'train' lie in 2 folders .*\(160px/train, 320px/train\).*options.splits.train"):
        open_dataset("hf", spec("huggingface", tmp_path / "two"))
    chosen = open_dataset("hf", spec("huggingface", tmp_path / "two", splits={"train": "160px/train/*.parquet", "test": "160px/test"}))
    assert_digits(chosen, digits)


def test_huggingface_bad_rows_name_file_and_row(tmp_path, digits):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    images, labels = digits["train"]
    good = hf_dataset(images, labels)
    good.save_to_disk(str(tmp_path / "train"))
    broken = datasets.Dataset.from_dict(
        {"image": [{"bytes": png(i), "path": None} for i in images[:4]] + [{"bytes": b"junk", "path": None}], "label": [0, 1, 2, 3, 4]},
        features=datasets.Features({"image": datasets.Image(decode=False), "label": datasets.Value("int64")}),
    )
    broken.save_to_disk(str(tmp_path / "test"))
    data = open_dataset("hf", spec("huggingface", tmp_path))
    with pytest.raises(DataFormatError, match=r"test/data-00000-of-00001\.arrow: row 4: cannot decode image"):
        all_images(data.test)
    unlabelled = datasets.Dataset.from_dict({"image": [Image.fromarray(images[0])] * 3, "label": [1, None, 2]})
    unlabelled.save_to_disk(str(tmp_path / "holes"))
    with pytest.raises(DataFormatError, match=r"holes/data-00000-of-00001\.arrow: row 1: missing label"):
        open_dataset("hf", spec("huggingface", tmp_path, splits={"test": "holes"}))


def test_huggingface_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(HarnessError, match=r"needs pyarrow: pip install 'procedural-harness\[hf\]'"):
        open_dataset("hf", spec("huggingface", tmp_path))


def test_huggingface_hub_needs_a_pinned_revision_and_stays_offline(tmp_path):
    pytest.importorskip("pyarrow")
    pytest.importorskip("huggingface_hub")
    with pytest.raises(HarnessError, match="needs options.revision"):
        open_dataset("hf", spec("huggingface", hub="someone/digits"))
    with pytest.raises(DatasetUnavailable, match="HF_HUB_OFFLINE is set"):
        open_dataset("hf", spec("huggingface", hub="someone/digits", revision="0" * 40))


def test_a_hub_dataset_comes_from_the_local_hub_cache_and_a_dry_run_says_whether_it_is_there(tmp_path, digits, monkeypatch, capsys):
    pytest.importorskip("datasets")
    from huggingface_hub import constants

    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "datasets--someone--digits" / "snapshots" / revision / "data"  # huggingface_hub's layout
    snapshot.mkdir(parents=True)
    hf_dataset(*digits["train"]).to_parquet(str(snapshot / "train-00000-of-00001.parquet"))
    hf_dataset(*digits["test"]).to_parquet(str(snapshot / "test-00000-of-00001.parquet"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert_digits(open_dataset("hf", spec("huggingface", hub="someone/digits", revision=revision)), digits)

    registry = tmp_path / "registry.yaml"
    registry.write_text(
        "datasets:\n"
        f"  cached: {{format: huggingface, options: {{hub: someone/digits, revision: '{revision}', crop: 8}}}}\n"
        f"  elsewhere: {{format: huggingface, options: {{hub: someone/letters, revision: '{revision}', crop: 8}}}}\n"
        "tasks:\n  knn-hub: {plugin: knn, params: {datasets: [cached, elsewhere]}}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["--registry", str(registry), "run", "--encoders", "rgb", "--tasks", "knn-hub", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert f"cached: hub dataset someone/digits at {revision}, in the local hub cache: {snapshot.parent}" in plan
    missing = f"elsewhere: hub dataset someone/letters at {revision}: not in the local hub cache; the run downloads it"
    assert f"{missing}, but HF_HUB_OFFLINE is set: MISSING\n" in plan  # as throughout the suite


# ------------------------------------------------------------------- torchvision
def write_cifar(root, digits):
    """CIFAR-10's python pickle layout (torchvision's files, md5 checks included)."""
    import hashlib

    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True)
    images, labels = digits["train"]
    tiles = {s: np.repeat(np.repeat(digits[s][0], 4, axis=1), 4, axis=2) for s in digits}  # 8 -> 32 px
    batches = {name: ("train", i) for i, (name, _) in enumerate(CIFAR10.train_list)} | {CIFAR10.test_list[0][0]: ("test", 0)}
    for name, (split, part) in batches.items():
        rows = np.array_split(np.arange(len(digits[split][1])), len(CIFAR10.train_list) if split == "train" else 1)[part]
        pixels = np.repeat(tiles[split][rows][:, None], 3, axis=1).reshape(len(rows), -1)
        (folder / name).write_bytes(pickle.dumps({"data": pixels, "labels": digits[split][1][rows].tolist()}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    CIFAR10.train_list = [[n, hashlib.md5((folder / n).read_bytes()).hexdigest()] for n, _ in CIFAR10.train_list]
    CIFAR10.test_list = [[n, hashlib.md5((folder / n).read_bytes()).hexdigest()] for n, _ in CIFAR10.test_list]
    CIFAR10.meta = {**CIFAR10.meta, "md5": hashlib.md5((folder / "batches.meta").read_bytes()).hexdigest()}


def test_torchvision_cifar10_pickles(tmp_path, digits, monkeypatch):
    from torchvision.datasets import CIFAR10

    for attribute in ("train_list", "test_list", "meta"):
        monkeypatch.setattr(CIFAR10, attribute, getattr(CIFAR10, attribute))
    write_cifar(tmp_path, digits)
    data = open_dataset("tv", spec("torchvision", tmp_path, crop=32, resize=32, **{"class": "CIFAR10"}))
    assert data.classes == [f"c{i}" for i in range(10)]
    for split in ("train", "test"):
        images, labels = digits[split]
        part = getattr(data, split)
        assert part.labels.tolist() == labels.tolist()
        got = np.concatenate([b.numpy() for b in part.batches(16)])
        assert (got[:, :, ::4, ::4] == images[:, None]).all()


def test_torchvision_imagefolder_missing_root_and_bad_item(tmp_path, digits):
    with pytest.raises(DatasetUnavailable, match=r"torchvision.datasets.ImageFolder: dataset 'tv': .*nowhere does not exist"):
        open_dataset("tv", spec("torchvision", tmp_path / "nowhere", **{"class": "ImageFolder"}))
    with pytest.raises(DatasetUnavailable, match=r"ImageFolder\(root='.*train'\) for split 'train': .*train does not exist; a split's root is datasets.tv.root joined .*options.splits.train"):
        open_dataset("tv", spec("torchvision", tmp_path, **{"class": "ImageFolder"}))  # the root exists, its train/ does not
    with pytest.raises(UnknownNameError, match="'CIFAR11'.*CIFAR10"):
        open_dataset("tv", spec("torchvision", tmp_path, **{"class": "CIFAR11"}))
    with pytest.raises(HarnessError, match="download is not allowed"):
        open_dataset("tv", spec("torchvision", tmp_path, args={"download": True}, **{"class": "CIFAR10"}))
    write_folders(tmp_path, digits)
    data = open_dataset("tv", spec("torchvision", tmp_path, **{"class": "ImageFolder"}))
    assert_digits(data, digits)
    (tmp_path / "test" / "7" / "002.png").write_bytes(b"junk")
    with pytest.raises(DataFormatError, match=r"ImageFolder.*split 'test': item 23 \(.*7/002\.png\) cannot be read"):
        all_images(open_dataset("tv", spec("torchvision", tmp_path, **{"class": "ImageFolder"})).test)


def test_torchvision_imagefolder_matches_split_classes_by_name(tmp_path, digits):
    """Each ImageFolder numbers its own folders: with a class missing from the test split,
    test labels still index the train split's classes, as the imagefolder format reads them."""
    import shutil

    write_folders(tmp_path, digits)
    shutil.rmtree(tmp_path / "test" / "0")
    data = open_dataset("tv", spec("torchvision", tmp_path, **{"class": "ImageFolder"}))
    folder = open_dataset("folder", spec("imagefolder", tmp_path))
    assert data.classes == folder.classes == [str(d) for d in range(10)]
    for split in ("train", "test"):
        assert getattr(data, split).labels.tolist() == getattr(folder, split).labels.tolist()
        assert np.array_equal(all_images(getattr(data, split)), all_images(getattr(folder, split)))
    assert 0 not in data.test.labels.tolist() and set(data.test.labels.tolist()) == set(range(1, 10))

    (tmp_path / "test" / "extra").mkdir()
    Image.fromarray(digits["test"][0][0]).save(tmp_path / "test" / "extra" / "000.png")
    with pytest.raises(DataFormatError, match=r"dataset 'tv': split 'test': class 'extra' is not among the classes of the 'train' split"):
        open_dataset("tv", spec("torchvision", tmp_path, **{"class": "ImageFolder"}))


def test_torchvision_query_labels_must_be_carried_by_memory_items(tmp_path, digits, monkeypatch):
    """CIFAR-10 names all ten classes in both splits; a test class no train item carries is an error."""
    from torchvision.datasets import CIFAR10

    for attribute in ("train_list", "test_list", "meta"):
        monkeypatch.setattr(CIFAR10, attribute, getattr(CIFAR10, attribute))
    images, labels = digits["train"]
    without_four = labels != 4
    write_cifar(tmp_path, {"train": (images[without_four], labels[without_four]), "test": digits["test"]})
    with pytest.raises(DataFormatError, match=r"dataset 'tv': split 'test': class 'c4' is not among the classes of the 'train' split's items"):
        open_dataset("tv", spec("torchvision", tmp_path, crop=32, resize=32, **{"class": "CIFAR10"}))


def write_svhn(root, digits):
    """SVHN's .mat files (X [32, 32, 3, n], y [n, 1] with 10 for the digit 0); returns its split_list."""
    import hashlib

    import scipy.io
    from torchvision.datasets import SVHN

    root.mkdir(parents=True, exist_ok=True)
    listed = {}
    for split, (images, labels) in digits.items():
        tiles = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)
        filename = SVHN.split_list[split][1]
        scipy.io.savemat(root / filename, {"X": np.repeat(tiles[..., None], 3, axis=3).transpose(1, 2, 3, 0), "y": np.where(labels == 0, 10, labels)[:, None]})
        listed[split] = [SVHN.split_list[split][0], filename, hashlib.md5((root / filename).read_bytes()).hexdigest()]
    return listed


def test_torchvision_without_class_names_keeps_its_numbers_and_checks_query_labels(tmp_path, digits, monkeypatch):
    """SVHN names no classes: labels are its own numbers in every split, and a query label
    no memory item carries is an error all the same."""
    from torchvision.datasets import SVHN

    monkeypatch.setattr(SVHN, "split_list", write_svhn(tmp_path, digits))
    data = open_dataset("tv", spec("torchvision", tmp_path, crop=32, resize=32, **{"class": "SVHN"}))
    assert data.classes == [str(d) for d in range(10)]
    for split in ("train", "test"):
        assert getattr(data, split).labels.tolist() == digits[split][1].tolist()
    images, labels = digits["train"]
    without_four = labels != 4
    monkeypatch.setattr(SVHN, "split_list", write_svhn(tmp_path, {"train": (images[without_four], labels[without_four]), "test": digits["test"]}))
    with pytest.raises(DataFormatError, match=r"dataset 'tv': split 'test': class '4' is not among the classes of the 'train' split's items"):
        open_dataset("tv", spec("torchvision", tmp_path, crop=32, resize=32, **{"class": "SVHN"}))


# ------------------------------------------------------------ unlabelled folders
def write_folders(root, digits, labelled=True):
    for split, (images, labels) in digits.items():
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / (str(label) if labelled else f"batch{i // 10}")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i % PER_CLASS[split == 'test']:03d}.png")


def test_imagefolder_without_labels(tmp_path, digits):
    flat = tmp_path / "flat"
    for i, image in enumerate(digits["train"][0]):
        (flat / "a" if i % 2 else flat).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save((flat / "a" if i % 2 else flat) / f"{i:03d}.png")
    data = open_dataset("pool", spec("imagefolder", flat, labels=False, train_dir="."))
    assert len(data.train) == len(digits["train"][1]) and len(data.test) == 0 and data.classes == []
    assert set(data.train.labels.tolist()) == {-1}
    expected = {f"{i:03d}.png": image for i, image in enumerate(digits["train"][0])}
    for path, image in zip(data.train.paths, all_images(data.train)):
        assert (image == expected[path.name][None]).all()
    with pytest.raises(DataFormatError, match=r"flat/test: directory not found \(expected <split>/<class>/<image> files\)"):
        open_dataset("pool", spec("imagefolder", flat, train_dir="."))  # with labels, sub-folders are classes
    with pytest.raises(HarnessError, match="labels must be true or false"):
        open_dataset("pool", spec("imagefolder", flat, labels="no"))


# ------------------------------------------------------------------ image tables
def folder_rows(digits):
    """(path below the root, digit, split) of each image `write_folders` writes."""
    return [
        (f"{split}/{label}/{i % PER_CLASS[split == 'test']:03d}", int(label), split)
        for split, (_, labels) in digits.items() for i, label in enumerate(labels)
    ]


def test_table_with_a_split_column_or_one_file_per_split(tmp_path, digits):
    write_folders(tmp_path / "images", digits)
    rows = folder_rows(digits)
    # a CSV with a header, class names as labels, columns in another order, a row of a third split
    lines = ["split,file,digit,note"] + [f"{split},{path}.png,digit {label},\"a, b\"" for path, label, split in rows]
    lines.insert(5, "val,train/0/000.png,digit 0,")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    data = open_dataset("t", spec("table", tmp_path, images_dir="images", image_column="file", label_column="digit"))
    assert_digits(data, digits)
    assert data.classes == [f"digit {d}" for d in range(10)] and sorted(data.splits) == ["test", "train", "val"]
    # DomainNet's layout: one headerless text file per split, `path class`; ids without their ending;
    # classes 0, 5, ..., 45 sort as numbers (5 before 10), so class index = digit
    for split in ("train", "test"):
        (tmp_path / f"{split}.txt").write_text("".join(f"images/{path}  {5 * label}\n" for path, label, s in rows if s == split))
    data = open_dataset("t", spec("table", tmp_path, files={"train": "train.txt", "test": "test.txt"}, header=False, suffix=".png"))
    assert_digits(data, digits)
    assert data.classes == [str(5 * d) for d in range(10)]
    # a TSV takes tabs
    (tmp_path / "all.tsv").write_text("image\tlabel\tsplit\n" + "".join(f"{path}.png\t{label}\t{split}\n" for path, label, split in rows))
    assert_digits(open_dataset("t", spec("table", tmp_path, file="all.tsv", images_dir="images")), digits)
    # one table without splits, split at random by class: 3 of each digit's 9 images as queries, as scikit-learn draws them
    from sklearn.model_selection import train_test_split

    (tmp_path / "pool.csv").write_text("image,label\n" + "".join(f"{path}.png,{label}\n" for path, label, _ in rows))
    data = open_dataset("t", spec("table", tmp_path, file="pool.csv", images_dir="images", test_fraction=1 / 3, seed=4))
    labels = np.array([label for _, label, _ in rows])
    _, test = train_test_split(np.arange(len(rows)), test_size=1 / 3, stratify=labels, random_state=4)
    assert sorted(map(str, data.test.paths)) == sorted(str(tmp_path / "images" / f"{rows[i][0]}.png") for i in test)
    assert np.bincount(data.test.labels).tolist() == [3] * 10 and np.bincount(data.train.labels).tolist() == [6] * 10


def test_table_bad_rows_name_file_and_line(tmp_path, digits):
    write_folders(tmp_path, digits)
    rows = folder_rows(digits)

    def table(lines, **options):
        (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
        return open_dataset("t", spec("table", tmp_path, **options))

    good = ["image,label,split"] + [f"{path}.png,{label},{split}" for path, label, split in rows]
    with pytest.raises(DataFormatError, match=r"labels\.csv: no column 'label' in the header \(image, class, split\)"):
        table(["image,class,split"] + good[1:])
    with pytest.raises(DataFormatError, match=r"labels\.csv: line 4: empty label \(column 'label'\)"):
        table(good[:3] + ["train/0/002.png,,train"] + good[4:])
    with pytest.raises(DataFormatError, match=r"labels\.csv: line 3: 2 field\(s\), the columns need 3"):
        table(good[:2] + ["train/0/001.png,0"] + good[3:])
    with pytest.raises(DataFormatError, match=r"labels\.csv: line 62: class '11' is not among the classes of the 'train' rows"):
        table(good[:61] + ["test/0/000.png,11,test"] + good[62:])
    with pytest.raises(DataFormatError, match=r"labels\.csv: line 2: image '\.\./x\.png' lies outside the root"):
        table([good[0], "../x.png,0,train"] + good[2:])
    with pytest.raises(DataFormatError, match=r"dataset 't': table '/etc/hosts' lies outside the root"):
        table(good, file="/etc/hosts")
    with pytest.raises(DataFormatError, match=r"no rows of split 'validation' \(options\.test_split\); the table holds 'test', 'train'"):
        table(good, test_split="validation")
    with pytest.raises(HarnessError, match=r"options\.image_column: with header: false, a column number from 0, got 'image'"):
        table(good[1:], header=False, image_column="image")
    with pytest.raises(HarnessError, match=r"with `files` each table is one split"):
        table(good, files={"train": "labels.csv"}, split_column="split")
    with pytest.raises(HarnessError, match=r"split_column or test_fraction, not both"):
        table(good, split_column="split", test_fraction=0.5)
    with pytest.raises(HarnessError, match=r"options\.test_fraction must be a number between 0 and 1, got 2"):
        table(good, test_fraction=2)
    with pytest.raises(DataFormatError, match=r"cannot split the table's rows 0\.5 by class: The least populated class"):
        table(good[:3] + ["train/1/000.png,1,train"], test_fraction=0.5)
    with pytest.raises(HarnessError, match=r"options\.seed must be an integer, got 'a'"):
        table(good, test_fraction=0.5, seed="a")
    with pytest.raises(HarnessError, match=r"options\.delimiter must be one character \(not a quote or line break\), got ', '"):
        table(good, delimiter=", ")
    # split names as YAML may give them (numbers) match the table's text
    numbered = table([line.replace(",train", ",1").replace(",test", ",2") for line in good], train_split=1, test_split=2)
    assert len(numbered.train) == 60 and len(numbered.test) == 30
    with pytest.raises(DataFormatError, match=r"missing\.csv: file not found"):
        table(good, file="missing.csv")
    # an image that is not there is named with the line that lists it, when it is decoded
    data = table(good[:7] + ["train/0/missing.png,0,train"] + good[8:])
    with pytest.raises(DataFormatError, match=r"missing\.png.*labels\.csv: line 8"):
        all_images(data.train)


def test_table_with_one_hot_or_multi_label_columns(tmp_path, digits):
    write_folders(tmp_path, digits)
    rows = folder_rows(digits)
    names = [f"c{d}" for d in range(10)]
    # ISIC's ground truth: a 0/1 column per class, written as floats; classes in the order given
    one_hot = ["image,split," + ",".join(names)] + [
        f"{path}.png,{split}," + ",".join("1.0" if d == label else "0.0" for d in range(10)) for path, label, split in rows
    ]
    (tmp_path / "truth.csv").write_text("\n".join(one_hot) + "\n")
    data = open_dataset("t", spec("table", tmp_path, file="truth.csv", label_columns=names))
    assert_digits(data, digits)
    assert data.classes == names and data.label_type == "multi-class"
    reversed_order = open_dataset("t", spec("table", tmp_path, file="truth.csv", label_columns=names[::-1]))
    assert reversed_order.classes == names[::-1] and (reversed_order.train.labels == 9 - digits["train"][1]).all()
    # CheXpert's findings: any number of 1s per row; labels [n, L]
    bits = {"odd": lambda d: d % 2, "big": lambda d: int(d >= 5), "zero": lambda d: int(d == 0)}
    (tmp_path / "findings.csv").write_text(
        "image,odd,big,zero\n" + "".join(f"{path}.png,{','.join(str(f(label)) for f in bits.values())}\n" for path, label, _ in rows)
    )
    data = open_dataset("t", spec("table", tmp_path, file="findings.csv", label_columns=list(bits), multi_label=True, test_fraction=0.25, seed=3))
    assert data.classes == list(bits) and data.label_type == "multi-label, binary-class"
    # multi-label rows are split at random (scikit-learn cannot stratify label sets), as train_test_split draws them
    from sklearn.model_selection import train_test_split

    _, test = train_test_split(np.arange(len(rows)), test_size=0.25, random_state=3)
    expected = np.array([[f(rows[i][1]) for f in bits.values()] for i in sorted(test)])
    assert sorted(map(str, data.test.paths)) == sorted(str(tmp_path / f"{rows[i][0]}.png") for i in test)
    assert data.test.labels.shape == (len(test), 3) and (data.test.labels == expected).all()

    def table(lines, **options):
        (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
        return open_dataset("t", spec("table", tmp_path, file="bad.csv", **options))

    with pytest.raises(DataFormatError, match=r"bad\.csv: line 3: 2 label columns hold 1 \(c0, c1\); each row needs exactly one \(multi_label: true"):
        table(one_hot[:2] + [one_hot[2].replace("0.0", "1.0", 1)] + one_hot[3:], label_columns=names)
    with pytest.raises(DataFormatError, match=r"bad\.csv: line 2: 0 label columns hold 1 \(none\)"):
        table([one_hot[0], one_hot[1].replace("1.0", "0.0")] + one_hot[2:], label_columns=names)
    with pytest.raises(DataFormatError, match=r"bad\.csv: line 2: label column 'big' holds '-1'; label columns hold 0 or 1"):
        table(["image,split,odd,big", "train/0/000.png,train,0,-1"], label_columns=["odd", "big"], multi_label=True)
    with pytest.raises(DataFormatError, match=r"no column 'c10' in the header"):
        table(one_hot, label_columns=names + ["c10"])
    with pytest.raises(HarnessError, match=r"options\.multi_label needs label_columns"):
        table(one_hot, multi_label=True)
    with pytest.raises(HarnessError, match=r"label_column or label_columns, not both"):
        table(one_hot, label_column="c0", label_columns=names)
    with pytest.raises(HarnessError, match=r"options\.label_columns names a column twice"):
        table(one_hot, label_columns=["c0", "c0"])
    with pytest.raises(HarnessError, match=r"options\.label_columns must be a list of columns, one per class, got 'c0'"):
        table(one_hot, label_columns="c0")
    with pytest.raises(HarnessError, match=r"options\.label_columns: with header: false, a column number from 0, got 'c0'"):
        table(one_hot[1:], header=False, label_columns=["c0"])
    headerless = table(one_hot[1:], header=False, split_column=1, label_columns=list(range(2, 12)))
    assert_digits(headerless, digits)
    assert headerless.classes == [str(column) for column in range(2, 12)]


def test_chexpert_uncertain_and_blank_findings_read_as_the_policy_says(tmp_path, digits):
    """CheXpert's label cells: 1.0, 0.0, -1.0 (uncertain) and empty (not mentioned).
    `uncertain_as` and `blank_as` give each a 0/1 reading (the U-Ones / U-Zeros policies);
    the expected labels are written out here cell by cell."""
    write_folders(tmp_path, digits)
    rows = [row for row in folder_rows(digits) if row[2] == "train"][:4] + [row for row in folder_rows(digits) if row[2] == "test"][:4]
    cells = [["1.0", "-1.0"], ["", "0.0"], ["-1.0", ""], ["0.0", "1.0"], ["", ""], ["-1", "-1"], ["1", "0"], ["0", "-1.0"]]
    (tmp_path / "chexpert.csv").write_text(
        "Path,Split,Edema,Pleural Effusion\n" + "".join(f"{path}.png,{split},{a},{b}\n" for (path, _, split), (a, b) in zip(rows, cells))
    )

    def read(uncertain, blank):
        table = spec("table", tmp_path, file="chexpert.csv", image_column="Path", split_column="Split",
                     label_columns=["Edema", "Pleural Effusion"], multi_label=True, uncertain_as=uncertain, blank_as=blank)
        data = open_dataset("t", table)
        reading = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": uncertain, "-1": uncertain, "": blank}
        for split in ("train", "test"):
            expected = [[reading[a], reading[b]] for (_, _, row_split), (a, b) in zip(rows, cells) if row_split == split]
            assert data.splits[split].labels.tolist() == expected, (uncertain, blank, split)

    for uncertain in (0, 1):
        for blank in (0, 1):
            read(uncertain, blank)
    with pytest.raises(DataFormatError, match=r"chexpert\.csv: line 2: label column 'Pleural Effusion' holds '-1\.0'; label columns hold 0 or 1 \(set options\.uncertain_as: 0 or 1"):
        read(None, 0)
    with pytest.raises(DataFormatError, match=r"chexpert\.csv: line 3: empty label \(column 'Edema'\) \(set options\.blank_as: 0 or 1"):
        read(1, None)
    with pytest.raises(HarnessError, match=r"datasets\.t\.options\.uncertain_as must be 0 or 1"):
        read(-1, 0)
    with pytest.raises(HarnessError, match=r"datasets\.t\.options\.blank_as must be 0 or 1"):
        read(1, True)
    with pytest.raises(HarnessError, match=r"datasets\.t\.options\.blank_as reads values of label_columns"):
        open_dataset("t", spec("table", tmp_path, file="chexpert.csv", image_column="Path", split_column="Split", label_column="Edema", blank_as=0))
    # an empty image field stays an error whatever blank_as says
    (tmp_path / "chexpert.csv").write_text("Path,Split,Edema\n,train,1\n")
    with pytest.raises(DataFormatError, match=r"line 2: empty image \(column 'Path'\)"):
        open_dataset("t", spec("table", tmp_path, file="chexpert.csv", image_column="Path", split_column="Split",
                               label_columns=["Edema"], multi_label=True, blank_as=0))


def test_a_table_without_its_split_column_points_at_test_fraction(tmp_path, digits):
    write_folders(tmp_path, digits)
    (tmp_path / "labels.csv").write_text("image,label\n" + "".join(f"{path}.png,{label}\n" for path, label, _ in folder_rows(digits)))
    with pytest.raises(DataFormatError, match=r"no column 'split' in the header \(image, label\).*split at random with options\.test_fraction"):
        open_dataset("t", spec("table", tmp_path))
    assert len(open_dataset("t", spec("table", tmp_path, test_fraction=0.5)).test.labels) == len(folder_rows(digits)) // 2
    # DomainNet's `path class` lines, without a split column
    (tmp_path / "pool.txt").write_text("".join(f"{path}.png {label}\n" for path, label, _ in folder_rows(digits)))
    with pytest.raises(DataFormatError, match=r"pool\.txt: line 1: 2 field\(s\), the columns need 3; a table without a split column is split at random with options\.test_fraction"):
        open_dataset("t", spec("table", tmp_path, file="pool.txt", header=False))
    with pytest.raises(DataFormatError, match=r"line 1: 2 field\(s\), the columns need 4$"):  # short of a label column: no such hint
        open_dataset("t", spec("table", tmp_path, file="pool.txt", header=False, label_column=3))


def test_a_whitespace_table_line_with_a_space_in_its_path_is_named(tmp_path, digits):
    """`sub dir/003.png 0 train` splits into four fields: its image would be `sub`, its class
    `dir/003.png`. The row's messages say so, pointing at CSV/TSV; extra fields after the
    columns read (a note) are read as before; the same table as TSV reads the path whole."""
    write_folders(tmp_path, digits)
    listed = [(f"{path}.png", label, split) for path, label, split in folder_rows(digits)]
    (tmp_path / "sub dir").mkdir()
    (tmp_path / listed[3][0]).rename(tmp_path / "sub dir" / "003.png")
    listed[3] = ("sub dir/003.png", *listed[3][1:])
    (tmp_path / "list.txt").write_text("".join(f"{path} {label} {split}\n" for path, label, split in listed))
    hint = rf"list\.txt: line 4 \(4 whitespace-separated fields where most lines have 3: if a path or class holds a space, use a CSV or TSV table"
    with pytest.raises(DataFormatError, match=hint + r".*: class 'dir/003\.png' is not among the classes"):
        open_dataset("t", spec("table", tmp_path, file="list.txt", header=False))
    for split in ("train", "test"):  # one table per split: `dir/003.png` becomes a class, `sub` an image
        (tmp_path / f"{split}.txt").write_text("".join(f"{path} {label}\n" for path, label, of in listed if of == split))
    with pytest.raises(DataFormatError, match=r"train\.txt: line 4 \(3 whitespace-separated fields where most lines have 2: .*\): image file .*/sub not found"):
        open_dataset("t", spec("table", tmp_path, files={"train": "train.txt", "test": "test.txt"}, header=False))
    (tmp_path / "list.tsv").write_text("".join(f"{path}\t{label}\t{split}\n" for path, label, split in listed))
    data = open_dataset("t", spec("table", tmp_path, file="list.tsv", header=False))
    assert data.train.paths[3] == tmp_path / "sub dir" / "003.png"
    assert data.classes[data.train.labels[3]] == str(listed[3][1])
    (tmp_path / "sub dir" / "003.png").rename(tmp_path / listed[2][0].replace("002", "003"))
    noted = [f"{path} {label} {split}" for path, label, split in folder_rows(digits)]
    noted[2] += "  # re-labelled by hand"
    (tmp_path / "noted.txt").write_text("image label split\n" + "\n".join(noted) + "\n")
    assert_digits(open_dataset("t", spec("table", tmp_path, file="noted.txt", suffix=".png")), digits)


# ------------------------------------------------------------ registry and CLI
def test_knn_through_the_cli_matches_the_same_images_as_an_imagefolder(tmp_path, digits, capsys):
    """kNN with the rgb encoder over webdataset shards (a root folder, and a root that is a
    `{split}` pattern) and over a table gives the accuracy it gives over the same images
    as an image folder (an independent reader)."""
    for split, (images, labels) in digits.items():
        write_shards(tmp_path / "wds" / split, images, labels)
    write_folders(tmp_path / "folder", digits)
    (tmp_path / "folder" / "labels.csv").write_text("image,label,split\n" + "".join(f"{path}.png,{label},{split}\n" for path, label, split in folder_rows(digits)))
    options = {"crop": 8, "resize": 8}
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        "datasets:\n"
        f"  digits-wds: {{format: webdataset, root: {tmp_path / 'wds'}, options: {json.dumps(options)}}}\n"
        f"  digits-wds-pattern: {{format: webdataset, root: '{tmp_path / 'wds'}/{{split}}/part-{{0..1}}.tar', options: {json.dumps(options)}}}\n"
        f"  digits-folder: {{format: imagefolder, root: {tmp_path / 'folder'}, options: {json.dumps(options)}}}\n"
        f"  digits-table: {{format: table, root: {tmp_path / 'folder'}, options: {json.dumps(options)}}}\n"
        "tasks:\n  knn-formats: {plugin: knn, params: {datasets: [digits-wds, digits-wds-pattern, digits-folder, digits-table], ks: [1, 3]}}\n"
    )
    assert load_registry(registry).dataset("digits-wds").format == "webdataset"
    assert main(["--registry", str(registry), "list", "digits-wds-pattern"]) == 0
    assert f"present at {tmp_path / 'wds'}" in capsys.readouterr().out
    out = tmp_path / "out"
    code = main(["--registry", str(registry), "run", "--encoders", "rgb", "--tasks", "knn-formats", "--out", str(out), "--device", "cpu", "--threads", "2"])
    assert code == 0, capsys.readouterr().err
    rows = {}
    for record in ResultStore(out).read():
        assert record.status == "ok", record.message
        rows.setdefault(record.dataset, {})[(record.metric, json.dumps(record.params, sort_keys=True))] = record.value
    assert set(rows) == {"digits-wds", "digits-wds-pattern", "digits-folder", "digits-table"}
    assert rows["digits-wds"] == rows["digits-wds-pattern"] == rows["digits-folder"] == rows["digits-table"]
    # rgb's features are the pixels (area-resized 8 -> 16 repeats each) minus 0.5: 1-NN by cosine
    from sklearn.neighbors import KNeighborsClassifier

    (train, train_labels), (test, test_labels) = digits["train"], digits["test"]
    features = [np.repeat(x[:, None].astype(np.float64) / 255.0 - 0.5, 3, axis=1).reshape(len(x), -1) for x in (train, test)]
    expected = 100.0 * KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute").fit(features[0], train_labels).score(features[1], test_labels)
    top1s = {v for (metric, params), v in rows["digits-wds"].items() if metric == "top1" and json.loads(params).get("k") == 1}
    (top1,) = top1s  # every vote of a single neighbour is the same
    assert top1 == pytest.approx(expected, abs=1e-6) and expected > 70


def test_a_shard_pattern_root_is_fingerprinted_by_its_shards(tmp_path, digits):
    """A webdataset root written as a pattern is no folder: the keys still see its shards."""
    from harness.config.registry import load_registry

    for split in ("train", "test"):
        write_shards(tmp_path / "wds" / split, *digits[split])
    registry_file = tmp_path / "registry.yaml"
    pattern = str(tmp_path / "wds") + "/{split}/part-{0..1}.tar"
    registry_file.write_text(f"datasets:\n  mine: {{format: webdataset, root: '{pattern}'}}\n")
    before = load_registry(registry_file).dataset_description("mine")["contents"]
    assert before is not None and before["files"] == 4
    with open(tmp_path / "wds" / "test" / "part-1.tar", "ab") as shard:
        shard.write(b"\0" * 1024)  # a test shard changes: so must the fingerprint
    after = load_registry(registry_file).dataset_description("mine")["contents"]
    assert after["digest"] != before["digest"]


# ------------------------------------------------- query classes the memory lacks
def test_an_imagefolder_train_class_without_images_is_an_error(tmp_path, digits):
    write_folders(tmp_path, digits)
    for image in (tmp_path / "train" / "3").iterdir():
        image.unlink()
    (tmp_path / "train" / "3" / "notes.txt").write_text("not an image")
    with pytest.raises(DataFormatError, match=r"dataset 'folder': .*train/3: class directory holds no image files .*add some, or remove the directory"):
        open_dataset("folder", spec("imagefolder", tmp_path))
    (tmp_path / "train" / "3" / "notes.txt").unlink()
    with pytest.raises(DataFormatError, match=r"train/3: class directory holds no image files"):
        open_dataset("folder", spec("imagefolder", tmp_path))


def test_webdataset_query_labels_must_be_carried_by_memory_samples(tmp_path, digits):
    images, labels = digits["train"]
    without_four = labels != 4
    write_shards(tmp_path / "train", images[without_four], labels[without_four], shards=1)
    test_images, test_labels = digits["test"]
    write_shards(tmp_path / "test", test_images, test_labels, shards=1)
    first_four = int(np.flatnonzero(test_labels == 4)[0])
    with pytest.raises(DataFormatError, match=rf"dataset 'wds': split 'test': .*test/part-0\.tar: sample 's{first_four:05d}' \(sample {first_four} of the shard\): class '4' is not among the classes of the 'train' split's samples"):
        open_dataset("wds", spec("webdataset", tmp_path))

    strange = test_labels.copy()
    strange[2] = 11
    write_shards(tmp_path / "train", images, labels, shards=1)
    write_shards(tmp_path / "test", test_images, strange, shards=1)
    with pytest.raises(DataFormatError, match=r"sample 's00002' \(sample 2 of the shard\): class '11' is not among the classes"):
        open_dataset("wds", spec("webdataset", tmp_path))

    # classnames.txt may name a class neither split has: only query labels are checked
    write_shards(tmp_path / "train", images[without_four], labels[without_four], shards=1)
    write_shards(tmp_path / "test", test_images[test_labels != 4], test_labels[test_labels != 4], shards=1)
    (tmp_path / "classnames.txt").write_text("\n".join(f"digit {d}" for d in range(10)) + "\n")
    data = open_dataset("wds", spec("webdataset", tmp_path))
    assert data.classes[4] == "digit 4" and 4 not in data.train.labels.tolist() + data.test.labels.tolist()


def test_huggingface_query_labels_must_be_carried_by_memory_rows(tmp_path, digits):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    images, labels = digits["train"]
    test_images, test_labels = digits["test"]
    keep, test_keep = labels != 4, test_labels != 4
    hf_dataset(images[keep], labels[keep]).save_to_disk(str(tmp_path / "train"))
    hf_dataset(test_images, test_labels).save_to_disk(str(tmp_path / "test"))
    first_four = int(np.flatnonzero(test_labels == 4)[0])
    with pytest.raises(DataFormatError, match=rf"dataset 'hf': split 'test': .*test/data-00000-of-00001\.arrow: row {first_four}: class 'd4' is not among the classes of the 'train' split's rows"):
        open_dataset("hf", spec("huggingface", tmp_path))

    # the ClassLabel may name a class without memory rows when no query has it
    hf_dataset(test_images[test_keep], test_labels[test_keep]).save_to_disk(str(tmp_path / "test"))
    data = open_dataset("hf", spec("huggingface", tmp_path))
    assert data.classes == [f"d{i}" for i in range(10)]
    assert data.test.labels.tolist() == test_labels[test_keep].tolist()
