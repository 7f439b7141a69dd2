"""Image modes beyond 8 bits: 16-bit files and uint16 arrays are scaled alike, float and
32-bit images are refused (never a silently black or white image), and 1-bit masks read
as classes 0 and 1. Expected pixels are computed by hand from the values written."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from harness.config.schema import DatasetSpec
from harness.datasets import decode_image, open_dataset
from harness.datasets.items import array_to_image
from harness.errors import DataFormatError

LEVELS = np.array([[0, 1, 128, 129, 257, 385, 40000, 65534, 65535]], dtype=np.uint16)


def scaled_by_hand(values: np.ndarray) -> np.ndarray:
    """value * 255 / 65535 rounded to nearest, in integers (no ties: 65535 = 255 * 257)."""
    return ((values.astype(np.int64) * 255 + 65535 // 2) // 65535).astype(np.uint8)


def grey(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image)
    assert rgb.dtype == np.uint8 and rgb.shape[-1] == 3 and (rgb == rgb[..., :1]).all()
    return rgb[..., 0]


# ------------------------------------------------------------------ arrays
def test_uint16_arrays_are_scaled_as_16_bit_files_and_8_bit_arrays_read_as_before(tmp_path):
    Image.fromarray(LEVELS).save(tmp_path / "grey16.png")  # PIL's 16-bit grey PNG
    Image.fromarray(LEVELS).save(tmp_path / "grey16.tif")
    expected = scaled_by_hand(LEVELS)
    assert expected[0, [0, 2, 3, 6, 8]].tolist() == [0, 0, 1, 156, 255]
    assert (grey(decode_image(tmp_path / "grey16.png")) == expected).all()
    assert (grey(decode_image(tmp_path / "grey16.tif")) == expected).all()
    assert (grey(array_to_image(LEVELS, "hf: row 0")) == expected).all()
    assert (grey(array_to_image(LEVELS.astype(">u2"), "hf: row 0")) == expected).all()  # big-endian uint16 too
    colour = np.stack([LEVELS, LEVELS[:, ::-1], np.full_like(LEVELS, 40000)], axis=-1)
    for layout in (colour, colour.transpose(2, 0, 1)):  # [H, W, 3] and a tensor's [3, H, W]
        assert (np.asarray(array_to_image(layout, "tv: item 0")) == scaled_by_hand(colour)).all()

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert (np.asarray(array_to_image(pixels, "x")) == pixels).all()
    assert (np.asarray(array_to_image(pixels.astype(np.int64), "x")) == pixels).all()
    assert (np.asarray(array_to_image(pixels.astype(np.float32), "x")) == pixels).all()  # floats in 0..255
    unit = rng.random((5, 6))
    assert (grey(array_to_image(unit, "x")) == np.floor(unit * 255 + 0.5)).all()
    mask = rng.random((5, 6)) > 0.5
    assert (grey(array_to_image(mask, "x")) == mask).all()  # 0 and 1, as before


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([[0, 255, 256]], np.int64), r"int64 image values 0\.\.256 fall outside 0\.\.255; store 8-bit images as uint8, 16-bit ones as uint16"),
        (np.array([[-3, 0, 200]], np.int32), r"int32 image values -3\.\.200 fall outside 0\.\.255"),
        (np.array([[70000, 0]], np.uint32), r"uint32 image values 0\.\.70000 fall outside 0\.\.255"),
        (np.array([[-2.1, 0.0, 2.6]], np.float32), r"float image values -2\.1\.\.2\.6 are neither in 0\.\.1 nor in 0\.\.255.*store floats in 0\.\.1"),
        (np.array([[0.0, 300.0]]), r"float image values 0\.\.300 are neither"),
        (np.array([[0.5, np.nan]]), r"the image array holds 1 NaN or infinite value\(s\); store finite floats in 0\.\.1"),
    ],
)
def test_arrays_outside_their_range_are_refused_naming_the_item(values, message):
    with pytest.raises(DataFormatError, match=r"^data/train\.parquet: row 7: " + message):
        array_to_image(values, "data/train.parquet: row 7")


# ------------------------------------------------------------------- files
def test_float_tiff_is_refused_naming_the_file_and_its_mode(tmp_path):
    unit = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray(unit, mode="F").save(tmp_path / "depth.tif")  # old PIL: convert("RGB") made it black
    with pytest.raises(DataFormatError, match=(
        r"depth\.tif: a floating-point image \(PIL mode F, 32 bits per sample\) \(images\.txt line 3\) "
        r".*convert it to an 8-bit or 16-bit PNG or TIFF"
    )):
        decode_image(tmp_path / "depth.tif", "images.txt line 3")


def test_32_bit_integer_tiff_is_refused_whatever_its_values(tmp_path):
    for name, values in {"small.tif": [[0, 100, 255]], "large.tif": [[0, 70000, 2**31 - 1]]}.items():
        Image.fromarray(np.array(values, np.int32), mode="I").save(tmp_path / name)
        with pytest.raises(DataFormatError, match=rf"{name.replace('.', '[.]')}: a 32-bit integer image \(PIL mode I, 32 bits per sample\).*convert it to an 8-bit or 16-bit PNG or TIFF"):
            decode_image(tmp_path / name)


def test_float_image_in_a_folder_dataset_is_refused_when_read(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(np.full((4, 4), 0.5, np.float32), mode="F").save(tmp_path / split / "a" / "x.tif")
    data = open_dataset("folder", DatasetSpec(format="imagefolder", root=str(tmp_path), options={"crop": 4, "resize": 4}))
    with pytest.raises(DataFormatError, match=r"test/a/x\.tif: a floating-point image \(PIL mode F"):
        next(iter(data.test.batches(1)))


def test_mode_i_files_are_16_bit_only_within_0_to_65535(tmp_path):
    maxval = 65535
    values = LEVELS.astype(">u2")
    (tmp_path / "grey16.pgm").write_bytes(b"P5\n%d 1\n%d\n" % (LEVELS.shape[1], maxval) + values.tobytes())
    with Image.open(tmp_path / "grey16.pgm") as image:
        assert image.mode in ("I", "I;16", "I;16B")
    assert (grey(decode_image(tmp_path / "grey16.pgm")) == scaled_by_hand(LEVELS)).all()
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "signed.tif", np.array([[0, 257, -4000, 32767]], np.int16))
    with Image.open(tmp_path / "signed.tif") as image:
        assert image.mode == "I"
    with pytest.raises(DataFormatError, match=(
        r"signed\.tif: an integer image \(PIL mode I, 16 bits per sample\) with values -4000\.\.32767, outside the "
        r"16-bit range 0\.\.65535; convert it to an 8-bit or 16-bit PNG or TIFF"
    )):
        decode_image(tmp_path / "signed.tif")


# ------------------------------------------------------------------- masks
def test_1_bit_png_mask_reads_as_classes_0_and_1(tmp_path):
    rng = np.random.default_rng(1)
    bits = rng.random((5, 11)) > 0.5  # a width that is not a multiple of 8: padded rows
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(rng.integers(0, 256, (5, 11, 3), dtype=np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(bits).save(tmp_path / "masks" / "a.png")
    with Image.open(tmp_path / "masks" / "a.png") as mask:
        assert mask.mode == "1"
    labels = open_dataset("seg", DatasetSpec(format="ade20k", root=str(tmp_path))).split("val").read_labels(0)
    assert labels.dtype == np.int64 and labels.tolist() == bits.astype(int).tolist()


# ------------------------------------------------ tables and torchvision items
def test_a_uint16_array_column_of_a_parquet_table_is_scaled_as_a_16_bit_file(tmp_path):
    """pyarrow hands a cell of numbers out as Python ints: the column's own dtype (uint16)
    decides the scaling, as it would for the array itself."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    images = [LEVELS, LEVELS[:, ::-1]]
    column = pa.array([image.tolist() for image in images], type=pa.list_(pa.list_(pa.uint16())))
    (tmp_path / "data").mkdir()
    for split in ("train", "test"):
        pq.write_table(pa.table({"image": column, "label": [0, 1]}), tmp_path / "data" / f"{split}-00000-of-00001.parquet")
    data = open_dataset("hf", DatasetSpec(format="huggingface", root=str(tmp_path), options={"crop": 9, "resize": 9}))
    read = [grey(image) for image in map(data.test.fetch, range(2))]
    assert [image.tolist() for image in read] == [scaled_by_hand(image).tolist() for image in images]


def test_a_torchvision_item_handed_out_as_a_pil_image_is_checked_like_a_file() -> None:
    from harness.datasets.images import PixelLimit
    from harness.datasets.torchvision_format import item_image

    items = [
        (Image.fromarray(LEVELS), 0),  # a 16-bit grey PIL image: scaled, not clipped to white
        (Image.fromarray(np.full((2, 2), 0.5, np.float32), mode="F"), 1),
    ]
    assert (grey(item_image(items, 0, "MyData(train)", PixelLimit())) == scaled_by_hand(LEVELS)).all()
    with pytest.raises(DataFormatError, match=r"^MyData\(train\): item 1: a floating-point image \(PIL mode F\)"):
        item_image(items, 1, "MyData(train)", PixelLimit())
