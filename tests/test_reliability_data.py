"""Data reliability: keys see the data's contents, image folders survive link loops,
16-bit and huge images are handled, malformed .npz files are refused with a message."""

from __future__ import annotations

import os
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

import harness
from harness.config.registry import load_registry
from harness.config.schema import DatasetSpec
from harness.datasets import open_dataset
from harness.errors import DataFormatError, HarnessError

COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40)}


def write_pets(root, test_colours=None, size=(12, 10)):
    """root/{train,test}/{cat,dog}/*.ppm: solid class colours (a fixed byte size per image).
    `test_colours` overrides the colour of each test class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        for cls, colour in COLOURS.items():
            if split == "test" and test_colours:
                colour = test_colours[cls]
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.integers(-20, 21, size=(size[1], size[0], 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{cls}_{i}.ppm")
    return root


def pets_registry(tmp_path, root, **options):
    lines = "".join(f", {key}: {value}" for key, value in options.items())
    path = tmp_path / "registry.yaml"
    path.write_text(
        "datasets:\n"
        f"  pets: {{format: imagefolder, root: {root}, options: {{crop: 8, resize: 8{lines}}}}}\n"
        "tasks:\n"
        "  knn-pets: {plugin: knn, params: {datasets: [pets], ks: [1]}}\n"
    )
    return path


def top1(results):
    [value] = [r.value for r in results if r.status == "ok" and r.headline]
    return value


def run_pets(registry, out, force=False):
    return top1(harness.run(encoders=["rgb"], tasks=["knn-pets"], out=out, registry=registry, force=force))


# ------------------------------------------------------------- keys see the data
def test_replaced_images_are_embedded_afresh(tmp_path):
    root = write_pets(tmp_path / "pets")
    registry = pets_registry(tmp_path, root)
    assert run_pets(registry, tmp_path / "out1") == pytest.approx(100.0)
    test_files = sorted((root / "test").rglob("*.ppm"))
    times = {path: path.stat().st_mtime_ns for path in test_files}
    sizes = {path: path.stat().st_size for path in test_files}
    write_pets(root, test_colours={"cat": COLOURS["dog"], "dog": COLOURS["cat"]})
    for path in test_files:  # same names, sizes and times: only the content tells
        os.utime(path, ns=(times[path], times[path]))
        assert path.stat().st_size == sizes[path]
    assert run_pets(registry, tmp_path / "out2") == pytest.approx(0.0)
    assert run_pets(registry, tmp_path / "out1", force=True) == pytest.approx(0.0)


def test_fingerprint_covers_listing_content_and_npz_members(tmp_path):
    root = write_pets(tmp_path / "pets")
    registry = load_registry(pets_registry(tmp_path, root))
    first = registry.dataset_description("pets")["contents"]
    assert first["files"] == 12 and first["content"] == "sample"
    assert load_registry(registry.path).dataset_description("pets") == registry.dataset_description("pets")
    (root / "train" / "cat" / "cat_0.ppm").unlink()
    assert registry.dataset_description("pets")["contents"] != first

    npz = tmp_path / "data.npz"
    np.savez(npz, train_images=np.zeros((2, 4, 4), np.uint8))
    npz_spec = DatasetSpec(format="medmnist", root=str(npz))
    from harness.datasets.fingerprint import dataset_fingerprint

    before = dataset_fingerprint("m", npz_spec)
    os.utime(npz, ns=(1, 1))  # the members' CRCs decide, not the file's time
    assert dataset_fingerprint("m", npz_spec) == before
    np.savez(npz, train_images=np.ones((2, 4, 4), np.uint8))
    assert dataset_fingerprint("m", npz_spec) != before
    assert dataset_fingerprint("d", DatasetSpec(format="digits"))["packages"]["scikit-learn"]


def test_full_fingerprint_option_and_bad_value(tmp_path):
    root = write_pets(tmp_path / "pets")
    registry = load_registry(pets_registry(tmp_path, root, fingerprint="full"))
    assert registry.dataset_description("pets")["contents"]["content"] == "full"
    assert len(open_dataset("pets", registry.dataset("pets")).train) == 8
    bad = load_registry(pets_registry(tmp_path, root, fingerprint="some"))
    with pytest.raises(HarnessError, match=r"datasets\.pets\.options\.fingerprint must be one of sample, full"):
        bad.dataset_description("pets")


def test_force_recomputes_embeddings_once_per_run(tmp_path):
    from harness.runner.context import CellContext, RunContext

    root = write_pets(tmp_path / "pets")
    registry = load_registry(pets_registry(tmp_path, root))
    encoder = registry.create("encoder", "rgb")
    task = registry.create("task", "knn-pets")
    split = open_dataset("pets", registry.dataset("pets")).train
    calls = []
    original = encoder.embed
    encoder.embed = lambda images: calls.append(len(images)) or original(images)

    def embed(run):
        return CellContext(run=run, task=task, encoder=encoder, dataset="pets", cell_key="k").embed_split(split, "train")

    embed(RunContext(registry=registry, progress=False))
    embed(RunContext(registry=registry, progress=False))
    assert calls == [8]
    forced = RunContext(registry=registry, progress=False, force=True)
    embed(forced)
    embed(forced)
    assert calls == [8, 8]


# ----------------------------------------------------------------- link loops
def test_link_loop_in_an_image_folder_is_skipped_with_a_warning(tmp_path):
    root = write_pets(tmp_path / "pets")
    loop = root / "train" / "dog" / "loop"
    loop.symlink_to("..", target_is_directory=True)
    elsewhere = write_pets(tmp_path / "more") / "train" / "dog"
    (root / "train" / "dog" / "more").symlink_to(elsewhere, target_is_directory=True)
    with pytest.warns(UserWarning, match=r"loop: directory not scanned for images: it leads back to .*a loop"):
        data = open_dataset("pets", DatasetSpec(format="imagefolder", root=str(root)))
    labels = dict(zip((p.name for p in data.train.paths), data.train.labels))
    assert len(data.train) == 12  # 4 cats, 4 dogs, and the 4 dogs the link outside the tree leads to
    assert {name: label for name, label in labels.items() if name.startswith("cat")} == {f"cat_{i}.ppm": 0 for i in range(4)}


def test_link_into_another_class_is_not_listed_twice(tmp_path):
    root = write_pets(tmp_path / "pets")
    (root / "train" / "cat" / "dogs").symlink_to(root / "train" / "dog", target_is_directory=True)
    with pytest.warns(UserWarning, match=r"dogs: directory not scanned for images: it leads back into"):
        data = open_dataset("pets", DatasetSpec(format="imagefolder", root=str(root)))
    assert list(data.train.labels) == [0] * 4 + [1] * 4


def test_links_to_nothing_in_an_image_folder_are_named_not_dropped(tmp_path):
    """A link whose target is gone (an unmounted disk): inside a class it is named in a
    warning; as a class directory it is an error, since the class would vanish."""
    root = write_pets(tmp_path / "pets")
    (root / "train" / "dog" / "batch2").symlink_to(tmp_path / "not-mounted" / "batch2", target_is_directory=True)
    (root / "train" / "dog" / ".#notes").symlink_to("user@host.1234")  # an editor's lock file: no warning
    with pytest.warns(UserWarning, match=r"batch2: not scanned for images: it links to .*not-mounted/batch2, which does not exist") as caught:
        data = open_dataset("pets", DatasetSpec(format="imagefolder", root=str(root)))
    assert len(caught) == 1 and list(data.train.labels) == [0] * 4 + [1] * 4
    (root / "train" / "README").symlink_to(tmp_path / "not-mounted" / "notes.txt")  # a file's link at class level: ignored
    (root / "train" / "x.jpg").symlink_to(tmp_path / "not-mounted" / "x.jpg")
    with pytest.warns(UserWarning, match="batch2: not scanned"):  # batch2's warning again; none for these two
        assert open_dataset("pets", DatasetSpec(format="imagefolder", root=str(root))).classes == ["cat", "dog"]
    (root / "train" / "eel").symlink_to(tmp_path / "not-mounted" / "eel", target_is_directory=True)
    with pytest.raises(DataFormatError, match=r"train/eel: a class directory's link to .*not-mounted/eel, which does not exist"):
        open_dataset("pets", DatasetSpec(format="imagefolder", root=str(root)))


# ------------------------------------------------------------------ 16-bit images
def write_png16(path, values):
    """A 16-bit PNG (grey [H, W] or RGB [H, W, 3]) written by hand: PIL writes no 16-bit RGB."""
    values = np.asarray(values, dtype=np.uint16)
    height, width = values.shape[:2]
    colour_type = 0 if values.ndim == 2 else 2
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def test_16_bit_png_is_scaled_to_8_bits(tmp_path):
    from harness.datasets import decode_image

    levels = np.array([[0, 257, 40000, 65535]], dtype=np.uint16)
    grey = np.asarray(decode_image(write_png16(tmp_path / "grey.png", levels)))
    assert grey[0, :, 0].tolist() == [0, 1, 156, 255]  # 40000 * 255 / 65535 = 155.6
    assert (grey == grey[..., :1]).all()
    Image.fromarray(levels).save(tmp_path / "pil.png")  # PIL's own 16-bit grey writer
    assert np.asarray(decode_image(tmp_path / "pil.png"))[0, :, 0].tolist() == [0, 1, 156, 255]
    rgb = np.stack([levels, levels[:, ::-1], np.full_like(levels, 40000)], axis=-1)
    decoded = np.asarray(decode_image(write_png16(tmp_path / "rgb.png", rgb)))
    assert decoded[0].tolist() == [[0, 255, 156], [1, 156, 156], [156, 1, 156], [255, 0, 156]]


# --------------------------------------------------------------- huge images
def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    root = write_pets(tmp_path / "pets")
    Image.new("RGB", (300, 200)).save(root / "test" / "cat" / "cat_0.ppm")
    data = open_dataset("pets", DatasetSpec(format="imagefolder", root=str(root), options={"max_pixels": 50_000}))
    with pytest.raises(DataFormatError, match=r"cat_0\.ppm: image is 300 x 200 = 60000 pixels.*raise datasets\.pets\.options\.max_pixels"):
        list(data.test.batches(4))
    data = open_dataset("pets", DatasetSpec(format="imagefolder", root=str(root), options={"max_pixels": 60_000}))
    assert len(np.concatenate([b.numpy() for b in data.test.batches(4)])) == 4
    with pytest.raises(HarnessError, match=r"datasets\.pets\.options\.max_pixels must be a positive integer"):
        open_dataset("pets", DatasetSpec(format="imagefolder", root=str(root), options={"max_pixels": 0}))


def test_default_pixel_limit_refuses_a_decompression_bomb(tmp_path):
    from harness.datasets import decode_image

    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 9_000)).save(path)  # 90 million pixels in a file of a few KB
    assert path.stat().st_size < 100_000
    with pytest.raises(DataFormatError, match=r"bomb\.png: image is 10000 x 9000 = 90000000 pixels, more than the limit of 89478485"):
        decode_image(path)


# -------------------------------------------------------------------- .npz files
def write_medmnist(path, rows=(6, 2, 4), size=4):
    arrays = {}
    for split, count in zip(("train", "val", "test"), rows):
        arrays[f"{split}_images"] = np.full((count, size, size), 100, np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 2)[:, None].astype(np.uint8)
    np.savez(path, **arrays)
    return path


def test_npz_with_a_duplicate_member_is_refused(tmp_path):
    path = write_medmnist(tmp_path / "dup.npz")
    with zipfile.ZipFile(path, "a") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("test_labels.npy", archive.read("test_labels.npy"))
    with pytest.raises(DataFormatError, match=r"dup\.npz: member 'test_labels\.npy' appears 2 times"):
        open_dataset("m", DatasetSpec(format="medmnist", root=str(path)))


@pytest.mark.parametrize("rows, key", [((6, 2, 0), "test_images"), ((0, 2, 4), "train_images")])
def test_medmnist_split_without_rows_is_a_format_error(tmp_path, rows, key):
    path = write_medmnist(tmp_path / "empty.npz", rows)
    with pytest.raises(DataFormatError, match=rf"empty\.npz: key '{key}' holds no images"):
        open_dataset("m", DatasetSpec(format="medmnist", root=str(path)))


def test_medmnist_empty_split_exits_2_from_the_command_line(tmp_path):
    from harness.cli import main

    path = write_medmnist(tmp_path / "breastmnist.npz", (6, 2, 0))
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        f"datasets:\n  breast: {{format: medmnist, root: {path}}}\n"
        "tasks:\n  med: {plugin: medmnist, params: {datasets: [breast]}}\n"
    )
    out = tmp_path / "out"
    assert main(["--registry", str(registry), "run", "--encoders", "rgb", "--tasks", "med", "--out", str(out)]) == 2
    assert "DataFormatError: " + str(path) + ": key 'test_images' holds no images" in (out / "results.jsonl").read_text()


@pytest.mark.parametrize("size", [0, -28, "big"])
def test_medmnist_size_option_must_be_positive(tmp_path, size):
    with pytest.raises(HarnessError, match=r"datasets\.m\.options\.size must be a positive integer"):
        open_dataset("m", DatasetSpec(format="medmnist", root=str(tmp_path), options={"size": size}))
