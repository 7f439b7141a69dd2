"""DINO's multi-crop augmentation, batched in torch (on the GPU when the images are there).

DINO (`main_dino.py`, `DataAugmentationDINO`) applies, per image and per crop:

    RandomResizedCrop(size, scale, ratio=(3/4, 4/3), bicubic)
    RandomHorizontalFlip(0.5)
    RandomApply(ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1), p=0.8)
    RandomGrayscale(0.2)
    GaussianBlur(p, sigma in [0.1, 2.0])      p = 1.0 (global 1), 0.1 (global 2), 0.5 (local)
    Solarization(p=0.2)                        global crop 2 only
    Normalize(ImageNet mean, std)

Here the same operations run on a whole batch of uint8 images at once:

* every random draw for a step comes from one `torch.Generator` (seeded from the run's
  seed and the step) in a fixed order and is made for the *global* batch, so rank r of
  w uses rows r*b..(r+1)*b-1 and the draws do not depend on the number of processes;
* the crop is an affine resampling (`grid_sample`, bilinear) of the crop box, with the
  horizontal flip folded into the affine map; when the largest crop the scale range
  allows would shrink by 1.5x or more, every crop is sampled at that integer multiple of
  the output size and area-averaged (anti-aliasing, which PIL's resize also does);
* colour jitter applies its four operations in a random order per image, as
  torchvision does, with torchvision's formulas (luma 0.299/0.587/0.114, HSV hue shift);
* the blur is a true Gaussian (separable, reflect padding, kernel radius 3 x the largest
  sigma) with sigma drawn in [0.1, 2.0] pixels *at 224 px*, scaled by `sigma_scale`
  (global crop size / 224) so that a small CPU recipe blurs the same fraction of the
  image as the paper's;
* solarisation inverts values >= 128/255, as `PIL.ImageOps.solarize(img, 128)`.

The decisions (which images are flipped, jittered in which order, blurred) are drawn on
the CPU and taken there: nothing here waits for the GPU, so the host queues a step's
work while the GPU runs the last one. Per-image values go to the images' device with
non-blocking copies.

Nothing depends on the other images of the batch, so a rank's crops equal the same rows
of the crops of the whole global batch. Values stay float in [0, 1] between operations
(PIL rounds to uint8 after each one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.preprocessing import normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class CropSpec:
    """One crop of the multi-crop set."""

    size: int
    scale: tuple[float, float]
    blur_p: float
    solarize_p: float = 0.0


@dataclass(frozen=True)
class MultiCrop:
    """DINO's 2 global + n local crops."""

    global_size: int
    local_size: int
    n_local: int
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    sigma_scale: float = 1.0
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    flip_p: float = 0.5

    @property
    def crops(self) -> list[CropSpec]:
        specs = [
            CropSpec(self.global_size, self.global_scale, blur_p=1.0),
            CropSpec(self.global_size, self.global_scale, blur_p=0.1, solarize_p=0.2),
        ]
        specs += [CropSpec(self.local_size, self.local_scale, blur_p=0.5) for _ in range(self.n_local)]
        return specs

    # ------------------------------------------------------------------ random draws
    def draw(self, gen: torch.Generator, n: int, height: int, width: int) -> list[dict[str, torch.Tensor]]:
        """All random parameters of one step for `n` images (the global batch), on the CPU.

        The order and shapes of the draws are fixed, so a step's parameters depend only on
        the generator's seed.
        """
        out = []
        for spec in self.crops:
            box = _crop_boxes(gen, n, height, width, spec.scale)
            p = {
                "box": box,
                "flip": torch.rand(n, generator=gen) < self.flip_p,
                "jitter": torch.rand(n, generator=gen) < self.jitter_p,
                "factors": _jitter_factors(gen, n, self.jitter),
                "order": torch.rand(n, 4, generator=gen).argsort(dim=1),
                "gray": torch.rand(n, generator=gen) < self.grayscale_p,
                "blur": torch.rand(n, generator=gen) < spec.blur_p,
                "sigma": torch.empty(n).uniform_(*self.blur_sigma, generator=gen) * self.sigma_scale,
                "solarize": torch.rand(n, generator=gen) < spec.solarize_p,
            }
            out.append(p)
        return out

    # ------------------------------------------------------------------ application
    def apply(self, images: torch.Tensor, params: list[dict[str, torch.Tensor]], rows: slice | None = None) -> list[torch.Tensor]:
        """The normalised crops (float32 [n, 3, s, s] each) of uint8 `images` [n, 3, H, W].

        `rows` selects this process's rows of the global batch's parameters.
        """
        x = images.float().div_(255.0)
        crops = []
        for spec, host in zip(self.crops, params):
            if rows is not None:
                host = {k: v[rows] for k, v in host.items()}
            p = {k: _on(v, images.device) for k, v in host.items()}
            y = resized_crop(x, p["box"], p["flip"], spec.size, spec.scale[1])
            y = color_jitter(y, p["factors"], host["order"], host["jitter"])
            y = torch.where(p["gray"].view(-1, 1, 1, 1), grayscale(y).expand_as(y), y)
            y = gaussian_blur(y, p["sigma"], host["blur"], self.blur_sigma[1] * self.sigma_scale)
            y = torch.where(p["solarize"].view(-1, 1, 1, 1) & (y >= 128.0 / 255.0), 1.0 - y, y)
            crops.append(normalize(y, IMAGENET_MEAN, IMAGENET_STD))
        return crops


def _on(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device` without waiting for it (a CPU tensor is staged at once)."""
    return tensor.to(device, non_blocking=True)


def _crop_boxes(gen: torch.Generator, n: int, height: int, width: int, scale: tuple[float, float]) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for n images: [n, 4] = (top, left, h, w).

    Ten attempts per image (area in scale x area, log-uniform aspect ratio in [3/4, 4/3]);
    the first that fits wins, else the largest centred crop within the ratio range.
    """
    area = height * width
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    target = torch.empty(n, 10).uniform_(*scale, generator=gen) * area
    ratio = torch.exp(torch.empty(n, 10).uniform_(*log_ratio, generator=gen))
    u_top = torch.rand(n, generator=gen)
    u_left = torch.rand(n, generator=gen)
    w = torch.round(torch.sqrt(target * ratio))
    h = torch.round(torch.sqrt(target / ratio))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(ok.any(dim=1), ok.float().argmax(dim=1), torch.full((n,), -1))
    rows = torch.arange(n)
    pick = first.clamp(min=0)
    h, w = h[rows, pick], w[rows, pick]
    # fallback (no attempt fitted): the whole image, clipped to the ratio range
    in_ratio = width / height
    if in_ratio < 3 / 4:
        fw, fh = width, round(width / (3 / 4))
    elif in_ratio > 4 / 3:
        fh, fw = height, round(height * (4 / 3))
    else:
        fw, fh = width, height
    bad = first < 0
    h = torch.where(bad, torch.tensor(float(fh)), h)
    w = torch.where(bad, torch.tensor(float(fw)), w)
    top = torch.floor(u_top * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(u_left * (width - w + 1)).clamp(max=width - w)
    top = torch.where(bad, torch.tensor(float((height - fh) // 2)), top)
    left = torch.where(bad, torch.tensor(float((width - fw) // 2)), left)
    return torch.stack([top, left, h, w], dim=1)


def _jitter_factors(gen: torch.Generator, n: int, jitter: tuple[float, float, float, float]) -> torch.Tensor:
    b, c, s, hue = jitter
    lows = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -hue])
    highs = torch.tensor([1 + b, 1 + c, 1 + s, hue])
    return lows + (highs - lows) * torch.rand(n, 4, generator=gen)


def resized_crop(x: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, size: int, max_scale: float = 1.0) -> torch.Tensor:
    """Crop boxes (top, left, h, w) of float images [n, 3, H, W], resized to size x size.

    Anti-aliasing: sampled at `factor` x size and area-averaged, where `factor` is how
    much the largest crop this scale range allows shrinks (so it never depends on the
    other images of the batch).
    """
    n, _, height, width = x.shape
    top, left, h, w = box.unbind(dim=1)
    largest = min(max(height, width), math.sqrt(max_scale * height * width * 4 / 3))
    factor = int(min(4, max(1, math.floor(largest / size + 0.5))))
    out = size * factor
    sx = w / width
    sy = h / height
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = torch.where(flip, -sx, sx)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, 3, out, out], align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if factor > 1:
        y = F.avg_pool2d(y, factor)
    return y


def grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc = (maxc - r) / cr_divisor
    gc = (maxc - g) / cr_divisor
    bc = (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """HSV -> RGB as f(n) = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1
    (the same conversion as torchvision's sector table, in fewer operations)."""
    h, s, v = x.unbind(dim=1)
    n = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # 5, 3, 1
    k = torch.remainder(n + 6.0 * h.unsqueeze(1), 6.0)
    amount = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return v.unsqueeze(1) * (1.0 - s.unsqueeze(1) * amount)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (ratio * a + (1.0 - ratio) * b).clamp_(0.0, 1.0)


def _jitter_op(x: torch.Tensor, which: int, f: torch.Tensor) -> torch.Tensor:
    if which == 0:  # brightness
        return (x * f).clamp(0.0, 1.0)
    if which == 1:  # contrast: blend with the mean luma of the image
        return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f)
    if which == 2:  # saturation: blend with the luma image
        return _blend(x, grayscale(x), f)
    hsv = _rgb_to_hsv(x)  # hue: rotate in HSV
    return _hsv_to_rgb(torch.cat([torch.remainder(hsv[:, :1] + f, 1.0), hsv[:, 1:]], dim=1))


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """torchvision ColorJitter with per-image factors [n, 4] (brightness, contrast,
    saturation, hue) and operation order [n, 4]; only images where `apply`. Each
    operation runs on the images that apply it at that stage only. `order` and `apply`
    are read on the CPU (where they are, they decide which rows each operation takes)."""
    order, apply = order.cpu(), apply.cpu()
    if not bool(apply.any()):
        return x
    x = x.clone()
    for stage in range(4):
        op = order[:, stage]
        for which in range(4):
            rows = torch.nonzero(apply & (op == which)).flatten()
            if rows.numel() == 0:
                continue
            rows = _on(rows, x.device)
            f = factors[rows, which].view(-1, 1, 1, 1).to(x.dtype)
            x[rows] = _jitter_op(x[rows], which, f)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, apply: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Per-image Gaussian blur (sigma in pixels), only where `apply` (read on the CPU);
    reflect padding. The kernel reaches 3 x `max_sigma` (at most the image side) for
    every image."""
    if not bool(apply.cpu().any()):
        return x
    apply = _on(apply, x.device)
    n, c, height, width = x.shape
    radius = int(math.ceil(3.0 * max_sigma))
    radius = max(1, min(radius, (min(height, width) - 1)))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    safe_sigma = torch.where(apply, sigma, torch.ones_like(sigma)).to(x.dtype)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / safe_sigma.view(-1, 1)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    # images without blur get a delta kernel
    delta = (offsets == 0).to(x.dtype).view(1, -1).expand(n, -1)
    kernel = torch.where(apply.view(-1, 1), kernel, delta)
    weight = kernel.repeat_interleave(c, dim=0)  # [n*c, k]
    y = x.reshape(1, n * c, height, width)
    y = F.pad(y, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, weight.view(n * c, 1, 1, -1), groups=n * c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, weight.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, height, width)
