"""Bundled datasets: real images that installed packages ship, so they need no root.

`digits` (scikit-learn's handwritten digits), `lfw-faces` (scikit-image's LFW subset)
and `textures` (patches of scikit-image's photographs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.datasets.spec import dataset_options
from harness.datasets.splits import ArraySplit, ClassificationData, stratified_split

if TYPE_CHECKING:
    from harness.config.schema import DatasetSpec

BUNDLED_PACKAGES: dict[str, tuple[str, ...]] = {
    "digits": ("scikit-learn",),
    "lfw-faces": ("scikit-image",),
    "textures": ("scikit-image",),
}
"""The package that ships each bundled format's images: its version is the data's fingerprint."""


def grey_to_rgb_uint8(images: np.ndarray, max_value: float) -> np.ndarray:
    """[n, H, W] grey values in [0, max_value] -> uint8 [n, 3, H, W]."""
    scaled = np.clip(np.rint(images.astype(np.float64) * (255.0 / max_value)), 0, 255).astype(np.uint8)
    return np.repeat(scaled[:, None], 3, axis=1)


def read_lfw_faces(name: str, spec: DatasetSpec) -> ClassificationData:
    """scikit-image's bundled LFW subset (`skimage.data.lfw_subset()`): 200 grey 25 x 25
    crops, the first 100 faces and the other 100 non-faces (class 0 "face", 1 "non-face").

    Split: stratified, 50% test, seed 0 (options `test_fraction`, `seed`) -> 100 / 100.
    """
    from skimage.data import lfw_subset

    options = dataset_options(name, spec, {"test_fraction": 0.5, "seed": 0})
    crops = lfw_subset()
    images = grey_to_rgb_uint8(crops, 1.0)
    labels = (np.arange(len(crops)) >= len(crops) // 2).astype(np.int64)
    train, test = stratified_split(labels, options["test_fraction"], options["seed"])
    return ClassificationData(
        name=name,
        train=ArraySplit(images[train], labels[train]),
        test=ArraySplit(images[test], labels[test]),
        classes=["face", "non-face"],
        description="scikit-image LFW subset, faces vs non-faces, stratified 50/50 split (seed 0)",
    )


TEXTURE_PHOTOS = ("brick", "grass", "gravel", "coins", "text", "immunohistochemistry", "hubble_deep_field")
"""scikit-image's bundled photographs used as texture classes, one class per photograph."""


def texture_patches(photo: np.ndarray, patch: int, region: str) -> np.ndarray:
    """All patch x patch crops at stride patch / 2 lying wholly inside one region of the
    photograph: "train" = the left two thirds of its width, "test" = the right third."""
    height, width = photo.shape[:2]
    cut = (2 * width) // 3
    x0, x1 = (0, cut) if region == "train" else (cut, width)
    stride = max(1, patch // 2)
    ys = range(0, height - patch + 1, stride)
    xs = range(x0, x1 - patch + 1, stride)
    crops = [photo[y : y + patch, x : x + patch] for y in ys for x in xs]
    return np.stack(crops) if crops else np.zeros((0, patch, patch, 3), np.uint8)


def read_textures(name: str, spec: DatasetSpec) -> ClassificationData:
    """Texture patches cut from scikit-image's bundled photographs, one class per photo:
    brick, grass, gravel, coins, text, immunohistochemistry, hubble_deep_field.

    Each photo (grey ones repeated to 3 channels) is cut into `patch` x `patch` (32)
    crops at stride patch/2. Train crops lie wholly in the left two thirds of the
    photo, test crops in the right third, so no pixel is shared between the splits.
    From each region `train_per_class` (128) and `test_per_class` (64) crops are
    drawn without replacement (numpy default_rng(`seed`=0)) -> 896 / 448.
    """
    import skimage.data

    options = dataset_options(name, spec, {"patch": 32, "train_per_class": 128, "test_per_class": 64, "seed": 0})
    patch = int(options["patch"])
    rng = np.random.default_rng(int(options["seed"]))
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {"train": ([], []), "test": ([], [])}
    for label, photo_name in enumerate(TEXTURE_PHOTOS):
        photo = np.asarray(getattr(skimage.data, photo_name)())
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        photo = photo[..., :3].astype(np.uint8)
        for region, count in (("train", options["train_per_class"]), ("test", options["test_per_class"])):
            crops = texture_patches(photo, patch, region)
            chosen = np.sort(rng.choice(len(crops), size=min(int(count), len(crops)), replace=False))
            parts[region][0].append(crops[chosen].transpose(0, 3, 1, 2))
            parts[region][1].append(np.full(len(chosen), label, np.int64))
    splits = {region: ArraySplit(np.ascontiguousarray(np.concatenate(imgs)), np.concatenate(lbls)) for region, (imgs, lbls) in parts.items()}
    return ClassificationData(
        name=name,
        train=splits["train"],
        test=splits["test"],
        classes=list(TEXTURE_PHOTOS),
        description=f"scikit-image photographs as textures, {patch}-px crops, left 2/3 train / right 1/3 test",
    )


def read_digits(name: str, spec: DatasetSpec) -> ClassificationData:
    """scikit-learn's 1797 real 8x8 handwritten digits (UCI), grey 0-16 scaled to 0-255.

    Split: stratified, 30% test, seed 0 (options `test_fraction`, `seed`) -> 1257 / 540.
    """
    from sklearn.datasets import load_digits

    options = dataset_options(name, spec, {"test_fraction": 0.3, "seed": 0})
    digits = load_digits()
    images = grey_to_rgb_uint8(digits.images, 16.0)
    labels = digits.target.astype(np.int64)
    train, test = stratified_split(labels, options["test_fraction"], options["seed"])
    return ClassificationData(
        name=name,
        train=ArraySplit(images[train], labels[train]),
        test=ArraySplit(images[test], labels[test]),
        classes=[str(d) for d in range(10)],
        description="scikit-learn digits, stratified 70/30 split (seed 0)",
    )
