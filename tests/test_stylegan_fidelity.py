"""`stylegan-oriented` against the paper: the network sizes of `size_preset` (the paper's
is StyleGAN2's default synthesis network) and images without a frame at the border."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import harness
from harness.config.registry import use_registry
from harness.kinds import ParamsError

REGISTRY = """
generators:
  stylegan-oriented: {plugin: stylegan-oriented}
  stylegan-oriented-paper: {plugin: stylegan-oriented, params: {size_preset: paper}}
"""


@pytest.fixture(autouse=True)
def registry(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY)
    return use_registry(path)


def frame_to_interior_gradient(images: torch.Tensor, frame: int = 3) -> float:
    """Mean absolute difference between neighbouring pixels (grey levels, both axes) whose
    pair lies within `frame` px of the border, over the same mean in the interior."""
    grey = images.numpy().astype(np.float64).mean(axis=1)  # [n, H, W]
    edge_sum, edge_count, inner_sum, inner_count = 0.0, 0, 0.0, 0
    for diff in (np.abs(np.diff(grey, axis=2)), np.abs(np.diff(grey, axis=1))):
        _, h, w = diff.shape
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        distance = np.minimum(np.minimum(rows, h - 1 - rows), np.minimum(cols, w - 1 - cols))
        in_frame = distance < frame
        edge_sum += diff[:, in_frame].sum()
        edge_count += diff[:, in_frame].size
        inner_sum += diff[:, ~in_frame].sum()
        inner_count += diff[:, ~in_frame].size
    return (edge_sum / edge_count) / (inner_sum / inner_count)


def test_the_frame_statistic_sees_a_frame():
    """The statistic itself, on images with a known 2 px frame of noise."""
    g = torch.Generator().manual_seed(0)
    flat = torch.randint(100, 110, (4, 3, 64, 64), generator=g, dtype=torch.uint8)
    assert frame_to_interior_gradient(flat) == pytest.approx(1.0, abs=0.1)
    framed = flat.clone()
    framed[..., :2, :] = torch.randint(0, 255, (4, 3, 2, 64), generator=g, dtype=torch.uint8)
    assert frame_to_interior_gradient(framed) > 3.0


@pytest.mark.parametrize(("name", "n", "size"), [("stylegan-oriented-paper", 8, 64), ("stylegan-oriented", 32, 128)])
def test_no_frame_at_the_border(name, n, size):
    """Zero padding in the 3x3 convolutions drew a frame: the outer 3 px had 1.8-2.1 times
    the interior's gradient with the paper-size network, 1.2-1.3 times with the small one.
    With reflection padding both are within 15% of 1 (the outermost pixel pair is a little
    smoother, as bilinear upsampling clamps at the border)."""
    images = harness.get_generator(name).sample(0, n, size)
    ratio = frame_to_interior_gradient(images)
    assert 0.8 < ratio < 1.15, f"{name} at {size} px: frame / interior gradient {ratio:.3f}"
    if name == "stylegan-oriented":  # the small network is cheap to render twice
        released = harness.get_generator(name, padding="zeros").sample(0, n, size)  # the release's padding
        assert frame_to_interior_gradient(released) > 1.15, "padding: zeros draws the release's frame"


def test_size_presets_give_the_papers_and_the_small_network():
    paper = harness.get_generator("stylegan-oriented-paper")
    small = harness.get_generator("stylegan-oriented")
    assert (paper.params.channel_base, paper.params.channel_max, paper.params.w_dim) == (32768, 512, 512)
    assert (small.params.size_preset, small.params.channel_base, small.params.channel_max) == ("small", 2048, 32)
    # StyleGAN2 at 256 px: 512 channels up to 64 px, then 256 and 128
    by_hand = {res: min(32768 // res, 512) for res in (4, 8, 16, 32, 64, 128, 256)}
    assert by_hand == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}
    assert paper.layers(256) == [(4, 512, 512, False)] + [
        layer for res in (8, 16, 32, 64, 128, 256)
        for layer in ((res, by_hand[res // 2], by_hand[res], True), (res, by_hand[res], by_hand[res], False))
    ]
    assert max(cout for _, _, cout, _ in small.layers(256)) == 32
    assert paper.key != small.key
    assert paper.key == harness.get_generator("stylegan-oriented", size_preset="paper").key
    assert paper.key == harness.get_generator("stylegan-oriented", channel_base=32768, channel_max=512, size_preset="paper").key


def test_fields_set_explicitly_replace_the_presets_and_bad_presets_are_named():
    custom = harness.get_generator("stylegan-oriented", size_preset="paper", channel_max=64)
    assert (custom.params.channel_base, custom.params.channel_max) == (32768, 64)
    assert custom.key != harness.get_generator("stylegan-oriented-paper").key
    with pytest.raises(ParamsError, match=r"stylegan-oriented\.params\.size_preset: .*'small' or 'paper'"):
        harness.get_generator("stylegan-oriented", size_preset="large")


def test_the_paper_network_renders_on_a_cpu():
    """A handful of 64 px images, deterministic and sliceable."""
    gen = harness.get_generator("stylegan-oriented-paper", device="cpu")
    images = gen.sample(3, 4, 64)
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.uint8
    assert torch.equal(gen.sample(3, 2, 64, start=2), images[2:])
    assert (images.float().flatten(2).std(dim=2) > 2.0).all(), "every channel of every image varies"
    small = harness.get_generator("stylegan-oriented", device="cpu").sample(3, 4, 64)
    assert not torch.equal(small, images), "the two sizes are different networks"


@pytest.mark.parametrize(("name", "n", "alone"), [("stylegan-oriented", 66, (0, 1, 37, 63, 64, 65)), ("stylegan-oriented-paper", 4, (0, 3))])
def test_an_image_is_the_same_whatever_batch_renders_it(name, n, alone):
    """Image i is the same bytes drawn alone, in a short slice or in a batch of n (66 at
    32 px is more than one rendering batch of the small network: 64). A grouped
    convolution, or batched matrix products, gave other last bits for a batch of one on
    some CPUs, and a pixel rounded the other way."""
    gen = harness.get_generator(name, device="cpu")
    batch = gen.sample(5, n, 32)
    for i in alone:
        assert torch.equal(gen.sample(5, 1, 32, start=i)[0], batch[i]), f"image {i} drawn alone"
    assert torch.equal(gen.sample(5, 3, 32, start=n - 4), batch[n - 4 : n - 1])
