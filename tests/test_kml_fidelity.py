"""K-Means Leaves makes the pixels the paper's released code makes: the batched generator
against the per-image reference written from the released recipe
(`harness_plugins.generators._kml_reference`), on the same base images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import harness
from harness_plugins.generators._kml import mask_sources, two_means
from harness_plugins.generators._kml_reference import released_kml_image, released_kml_mask, released_two_means


def png_blobs(images: torch.Tensor) -> list[bytes]:
    """uint8 images [k, 3, H, W] as lossless files, the way the reference reads its inputs."""
    blobs = []
    for image in images.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    return blobs


@pytest.mark.parametrize("size", [128, 224, 256, 384])
def test_kml_labels_and_pixels_equal_the_released_recipe(size: int) -> None:
    """The 2-means labels (released Niter = 3: three assignments, two updates) and the
    output pixels, at base sizes below, at and above the 256 px mask source."""
    kml = harness.get_generator("kml", base="dead-leaves", device="cpu")
    out = kml.sample(5, 2, size)
    base = kml.base_images(5, 2, size, 0)
    ours = two_means(mask_sources(base[:, 0], 256).flatten(2).numpy(), 3)
    for k in range(2):
        reference_labels, _ = released_kml_mask(base[k, 0].float() / 255, size)
        assert int((ours[k] != (reference_labels == 1)).sum()) == 0, "differing mask labels"
        reference = released_kml_image(png_blobs(base[k]), size)
        assert np.array_equal(out[k].permute(1, 2, 0).numpy(), reference), f"pixels differ at {size} px"


@pytest.mark.parametrize("niter", [1, 2, 3, 4])
def test_iterations_count_assignments_as_the_released_niter(niter: int) -> None:
    base = harness.get_generator("dead-leaves").sample(2, 2, 96)
    sources = mask_sources(base, 256)
    ours = two_means(sources.flatten(2).numpy(), niter)
    for k in range(2):
        reference = released_two_means(sources[k].reshape(3, -1).T.contiguous().numpy(), niter)
        assert np.array_equal(ours[k], reference == 1)


def test_two_means_on_torch_equals_numpy() -> None:
    """The torch path (used on GPUs) performs the numpy path's float32 operations."""
    sources = mask_sources(harness.get_generator("dead-leaves").sample(3, 3, 64), 256).flatten(2)
    assert torch.equal(two_means(sources, 3), torch.from_numpy(two_means(sources.numpy(), 3)))


def test_kml_mixup_with_released_jpeg_equals_the_released_files() -> None:
    """`released_jpeg`: each KML image read back from a quality-75 JPEG, their mean
    written and read back from a JPEG again."""
    mixup = harness.get_generator("kml-mixup", base="dead-leaves", released_jpeg=True, device="cpu")
    out = mixup.sample(1, 2, 64)
    base = mixup.base_images(1, 2, 64, 0)
    for k in range(2):
        reference = released_kml_image(png_blobs(base[k]), 64, released_jpeg=True)
        assert np.array_equal(out[k].permute(1, 2, 0).numpy(), reference)
    plain = harness.get_generator("kml-mixup", base="dead-leaves", device="cpu").sample(1, 2, 64)
    assert not torch.equal(plain, out), "the JPEGs change pixels"
    assert np.array_equal(plain[0].permute(1, 2, 0).numpy(), released_kml_image(png_blobs(base[0]), 64))


def test_kml_with_released_jpeg_writes_one_jpeg() -> None:
    kml = harness.get_generator("kml", base="dead-leaves", released_jpeg=True, device="cpu")
    out = kml.sample(4, 1, 48)
    reference = released_kml_image(png_blobs(kml.base_images(4, 1, 48, 0)[0]), 48, released_jpeg=True)
    assert np.array_equal(out[0].permute(1, 2, 0).numpy(), reference)


def test_antialiased_interpolate_is_torchvisions_resize_on_tensors() -> None:
    """The mask source: torchvision's `Resize` on a float tensor is torch's antialiased
    bilinear interpolation, for downsizing and enlarging alike."""
    transforms = pytest.importorskip("torchvision.transforms")
    for side in (100, 384):
        x = torch.rand(3, side, side)
        expected = F.interpolate(x[None], size=(256, 256), mode="bilinear", align_corners=False, antialias=True)[0]
        assert torch.equal(transforms.Resize((256, 256))(x), expected)
