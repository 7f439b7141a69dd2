"""`stylegan-oriented`: images from randomly initialised StyleGAN2-style synthesis networks.

After Baradad et al. (2021), "StyleGAN-Oriented": an untrained StyleGAN2 synthesis
network (skip architecture: a constant 4x4 input, per resolution an upsampling and a
plain modulated 3x3 convolution, a modulated 1x1 "toRGB" added to the upsampled image)
in its "sparse, random configuration":

* every 3x3 filter is taken from a fixed dictionary of oriented wavelets (edges and
  lines at 8 orientations, 4 sparse patterns, and their negatives, 40 in all): per
  layer a random subset of 5..40 of them, one drawn per input channel, scaled per output
  channel by a normal draw (after weight demodulation only its sign survives);
* biases ~ U(-bias_range, bias_range) (bias_range 0.2), ReLU activations;
* one pink-noise map per image (spectrum 1/f^a, a ~ U(0.5, 1.5), times a smooth
  Laplacian envelope) resized to every layer ("same noise map") with strength
  ~ U(0, 0.3) per layer;
* latents w = LeakyReLU(0.2)(N(0, I)), one per layer, fed to the layers' style affines
  directly (no mapping network);
* each output channel renormalised to a mean and std drawn around ImageNet's
  (mean ~ N(0.483, 0.145), N(0.455, 0.142), N(0.401, 0.161); std ~ N(0.219, 0.063),
  N(0.213, 0.062), N(0.213, 0.069)), clipped to [0, 1].

The network's own parameters (constant input, style affines) are re-drawn every
`images_per_network` (400) images: image i uses the network seeded by (seed, i // 400);
everything drawn per image comes from (seed, i). The network renders at the power of two
at or above the requested size (at least 4) and is resized (bilinear, antialiased) to it,
so different sizes give related but not identical images.

Differences from the released code, all deliberate: per-image rather than per-batch
draws (so image i depends only on (seed, i)); upsampling is bilinear x2 followed by the
3x3 convolution (the release uses a transposed convolution with a [1, 3, 3, 1] filter);
the 3x3 convolutions pad by reflection, not with zeros (zero padding makes every layer
see an edge at the border, and the image then shows a frame 1-3 px wide whose gradients
are 1.2 (small network) to 2 (paper size) times the interior's); the pink noise map is
drawn at the network's resolution, not always at 512; 8-bit conversion rounds.

Network sizes (`size_preset`): "small" (channel_base 2048, channel_max 32) renders fast on
a CPU and is what the CPU recipes train on; "paper" is the size of the paper's network,
StyleGAN2's defaults (channel_base 32768, channel_max 512, w_dim 512). The release calls
the synthesis network directly on w = LeakyReLU(0.2)(N(0, I)), so StyleGAN2's mapping
network never runs and has no counterpart here. Because a layer's output channels only
differ by sign and bias, each layer costs one convolution per image, not Cout of them.
The convolutions and the toRGB products run image by image, and the styles are products
summed along w: a grouped convolution or a batched matrix product may pick another kernel
for another batch size (seen on a CPU), and an image's bytes must not depend on the batch
it is rendered in. Per image, the calls have the same shapes whatever the batch.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from harness.device import default_device
from harness.hookspecs import hookimpl
from harness.kinds import Generator

from harness_plugins.generators._seeding import check_sample_args, rng

if TYPE_CHECKING:
    import torch

COLOUR_STATS = (  # (mean of the mean, std of the mean, mean of the std, std of the std) per channel
    (0.483, 0.145, 0.219, 0.063),
    (0.455, 0.142, 0.213, 0.062),
    (0.401, 0.161, 0.213, 0.069),
)
SIZE_PRESETS: dict[str, dict[str, int]] = {  # channel counts each preset gives the fields left out
    "small": {"channel_base": 2048, "channel_max": 32},
    "paper": {"channel_base": 32768, "channel_max": 512},  # StyleGAN2's SynthesisNetwork defaults
}
BATCH_FLOATS = {"cpu": 1 << 25, "other": 1 << 28}  # most float32 activations of one rendering batch: 128 MiB, 1 GiB


@lru_cache(maxsize=1)
def wavelets() -> Any:
    """The 40 fixed 3x3 filters [40, 3, 3] (float32 numpy)."""
    import numpy as np

    y, x = np.mgrid[-1:2, -1:2].astype(np.float64)
    filters = []
    for k in range(8):  # odd (edge) filters across a line through the centre
        t = k * math.pi / 8
        f = np.clip(x * math.cos(t) + y * math.sin(t), -1, 1)
        filters.append(f - f.mean())
    for k in range(8):  # even (line) filters along a line through the centre
        t = k * math.pi / 8
        d = np.abs(-x * math.sin(t) + y * math.cos(t))
        f = 1.0 - 2.0 * np.minimum(d, 1.0)
        filters.append(f - f.mean())
    impulse = np.zeros((3, 3))
    impulse[1, 1] = 1
    surround = -np.ones((3, 3))
    surround[1, 1] = 1
    plus = np.zeros((3, 3))
    plus[1, :] = plus[:, 1] = 1
    filters += [impulse, surround, plus, 2 * plus - 1]
    filters += [-f for f in filters]
    return np.stack(filters).astype(np.float32)


class StyleGANOriented(Generator):
    """Random StyleGAN2-style networks with oriented wavelet filters."""

    version = 2  # 2: reflection padding (1 drew a frame at the border)

    class Params(Generator.Params):
        """`size_preset` fills `channel_base` and `channel_max` when they are left out;
        one that is set replaces the preset's value."""

        size_preset: Literal["small", "paper"] = Field(
            "small", description="fills channel_base and channel_max left out: small (a CPU network) or paper (StyleGAN2's sizes)"
        )
        channel_base: int = Field(
            2048, ge=4, description="channels at resolution r: min(channel_base / r, channel_max); left out: the preset's (small 2048, paper 32768)"
        )
        channel_max: int = Field(32, ge=1, description="most channels of any layer; left out: the preset's (small 32, paper 512)")
        w_dim: int = Field(512, ge=1, description="size of the latents w fed to the style affines")
        padding: Literal["reflect", "zeros"] = Field(
            "reflect", description="how the 3x3 convolutions pad: reflect (no frame at the border) or zeros (as the release, which draws one)"
        )
        images_per_network: int = Field(400, ge=1, description="images rendered by one network before its parameters are re-drawn")
        bias_range: float = Field(0.2, ge=0.0, le=100.0, description="biases ~ U(-bias_range, bias_range)")
        noise_strength: float = Field(0.3, ge=0.0, le=100.0, description="per-layer noise strength ~ U(0, noise_strength)")
        device: str | None = Field(
            None, exclude=True, description="where to render (cpu, cuda, cuda:1); default cuda when available; not part of the key"
        )

        @model_validator(mode="before")
        @classmethod
        def _fill_from_preset(cls, data: Any) -> Any:
            if isinstance(data, dict):
                preset = SIZE_PRESETS.get(data.get("size_preset", "small"), {})  # an unknown preset fails its own field
                data = {**preset, **data}
            return data

    def __init__(self, name: str | None = None, /, **params: Any) -> None:
        super().__init__(name, **params)
        self._networks: dict[tuple[int, int, int], dict[str, Any]] = {}

    # ------------------------------------------------------------------ architecture
    def channels(self, res: int) -> int:
        return max(1, min(self.params.channel_base // res, self.params.channel_max))

    def layers(self, resolution: int) -> list[tuple[int, int, int, bool]]:
        """(resolution, in channels, out channels, upsample) of every 3x3 layer."""
        out = [(4, self.channels(4), self.channels(4), False)]
        res = 8
        while res <= resolution:
            out.append((res, self.channels(res // 2), self.channels(res), True))
            out.append((res, self.channels(res), self.channels(res), False))
            res *= 2
        return out

    def network(self, seed: int, number: int, resolution: int) -> dict[str, Any]:
        """The parameters of network `number` of stream `seed` (cached, a few at a time)."""
        import numpy as np

        key = (seed, number, resolution)
        if key not in self._networks:
            if len(self._networks) >= 4:
                self._networks.pop(next(iter(self._networks)))
            r = rng("stylegan-network", seed, number, resolution)
            layers = self.layers(resolution)
            c4 = self.channels(4)
            net = {
                "const": r.standard_normal((c4, 4, 4)).astype(np.float32),
                "affine": [r.standard_normal((cin, self.params.w_dim)).astype(np.float32) for _, cin, _, _ in layers],
                "rgb_affine": [],
            }
            res = 4
            while res <= resolution:
                net["rgb_affine"].append(r.standard_normal((self.channels(res), self.params.w_dim)).astype(np.float32))
                res *= 2
            self._networks[key] = net
        return self._networks[key]

    # ------------------------------------------------------------------ per-image draws
    def draws(self, seed: int, index: int, resolution: int) -> dict[str, Any]:
        """Everything image `index` draws for itself (numpy)."""
        import numpy as np

        r = rng("stylegan-image", seed, index, resolution)
        layers = self.layers(resolution)
        n_rgb = int(math.log2(resolution)) - 1
        bank = len(wavelets())
        out: dict[str, Any] = {"filters": [], "signs": [], "bias": [], "strength": [], "rgb": []}
        out["w"] = r.standard_normal((len(layers) + 1, self.params.w_dim)).astype(np.float32)
        for _, cin, cout, _ in layers:
            subset = r.permutation(bank)[: r.integers(5, bank + 1)]
            out["filters"].append(subset[r.integers(0, len(subset), cin)])
            out["signs"].append(np.where(r.random(cout) < 0.5, -1.0, 1.0).astype(np.float32))
            out["bias"].append(r.uniform(-self.params.bias_range, self.params.bias_range, cout).astype(np.float32))
            out["strength"].append(np.float32(r.uniform(0.0, self.params.noise_strength)))
        for k in range(n_rgb):
            out["rgb"].append(r.standard_normal((3, self.channels(4 * 2**k))).astype(np.float32))
        out["pink_alpha"] = r.uniform(0.5, 1.5)
        out["pink_white"] = r.standard_normal((resolution, resolution)).astype(np.float32)
        out["pink_envelope"] = r.laplace(size=(4, 4)).astype(np.float32)
        stats = np.array(COLOUR_STATS)
        z = r.standard_normal((3, 2))
        out["colour_mean"] = (stats[:, 0] + stats[:, 1] * z[:, 0]).astype(np.float32)
        out["colour_std"] = (stats[:, 2] + stats[:, 3] * z[:, 1]).astype(np.float32)
        return out

    # ------------------------------------------------------------------ rendering
    def _pink(self, white: torch.Tensor, alpha: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
        """Pink noise maps [b, 1, R, R] with unit std from white noise [b, R, R]."""
        import torch
        import torch.nn.functional as F

        size = white.shape[-1]
        f = torch.fft.fftfreq(size, device=white.device)
        radius = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
        radius[0, 0] = 1.0
        gain = radius[None] ** (-alpha[:, None, None])
        gain[:, 0, 0] = 0.0
        field = torch.fft.ifft2(torch.fft.fft2(white) * gain).real
        env = F.interpolate(envelope[:, None], size=(size, size), mode="bicubic", align_corners=False)
        noise = field[:, None] * env
        noise = noise - noise.mean(dim=(2, 3), keepdim=True)
        return noise / noise.std(dim=(2, 3), keepdim=True).clamp(min=1e-8)

    def render(self, seed: int, indices: list[int], resolution: int) -> torch.Tensor:
        """Float images [b, 3, R, R] in [0, 1] at the network's resolution R."""
        import numpy as np
        import torch
        import torch.nn.functional as F

        device = torch.device(self.params.device or default_device())
        b = len(indices)
        draws = [self.draws(seed, i, resolution) for i in indices]
        nets = [self.network(seed, i // self.params.images_per_network, resolution) for i in indices]

        def stack(get: Any) -> torch.Tensor:
            return torch.from_numpy(np.stack([get(d, n) for d, n in zip(draws, nets)])).to(device)

        bank = torch.from_numpy(wavelets()).to(device)
        w = F.leaky_relu(stack(lambda d, n: d["w"]), 0.2)  # [b, L+1, w_dim]
        noise = self._pink(
            stack(lambda d, n: d["pink_white"]),
            torch.tensor([d["pink_alpha"] for d in draws], device=device, dtype=torch.float32),
            stack(lambda d, n: d["pink_envelope"]),
        )
        x = stack(lambda d, n: n["const"])
        img = None
        gain = math.sqrt(2.0)
        rgb_index = 0
        for j, (res, cin, cout, up) in enumerate(self.layers(resolution)):
            if up:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            affine = stack(lambda d, n, j=j: n["affine"][j])  # [b, cin, w_dim]
            styles = _per_image_dot(affine, w[:, j]) / math.sqrt(self.params.w_dim) + 1.0
            filters = bank[torch.from_numpy(np.stack([d["filters"][j] for d in draws])).to(device)]  # [b, cin, 3, 3]
            weight = styles[:, :, None, None] * filters
            weight = weight / torch.sqrt(weight.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
            padded = F.pad(x, (1, 1, 1, 1), mode="reflect" if self.params.padding == "reflect" else "constant")
            y = torch.cat([F.conv2d(padded[i:i + 1], weight[i:i + 1]) for i in range(b)])
            layer_noise = F.adaptive_avg_pool2d(noise, res) if res != noise.shape[-1] else noise
            strength = stack(lambda d, n, j=j: np.asarray(d["strength"][j])).view(b, 1, 1, 1)
            y = y + layer_noise * strength
            signs = stack(lambda d, n, j=j: d["signs"][j]).view(b, cout, 1, 1)
            bias = stack(lambda d, n, j=j: d["bias"][j]).view(b, cout, 1, 1)
            x = torch.addcmul(bias, signs, y).relu_().mul_(gain)
            if j == 0 or not up:  # the last layer of a block: add its toRGB output
                rgb_affine = stack(lambda d, n, k=rgb_index: n["rgb_affine"][k])
                rgb_styles = _per_image_dot(rgb_affine, w[:, j + 1]) / math.sqrt(self.params.w_dim) + 1.0
                rgb_w = stack(lambda d, n, k=rgb_index: d["rgb"][k]) * (rgb_styles / math.sqrt(cout))[:, None, :]
                y_rgb = torch.stack([rgb_w[i] @ x[i].view(cout, -1) for i in range(b)]).view(b, 3, res, res)
                if img is not None:
                    img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
                img = y_rgb if img is None else img + y_rgb
                rgb_index += 1
        mean = img.mean(dim=(2, 3), keepdim=True)
        std = img.std(dim=(2, 3), keepdim=True).clamp(min=1e-8)
        target_mean = stack(lambda d, n: d["colour_mean"]).view(b, 3, 1, 1)
        target_std = stack(lambda d, n: d["colour_std"]).view(b, 3, 1, 1)
        return ((img - mean) / std * target_std + target_mean).clamp(0.0, 1.0)

    def sample(self, seed: int, n: int, size: int, start: int = 0) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        seed, n, size, start = check_sample_args(seed, n, size, start)
        resolution = max(4, 1 << (size - 1).bit_length())
        out = torch.empty((n, 3, size, size), dtype=torch.uint8)
        widest = max(cout * res * res for res, _, cout, _ in self.layers(resolution))  # a layer's activations
        on_cpu = torch.device(self.params.device or default_device()).type == "cpu"
        step = max(1, min(64, BATCH_FLOATS["cpu" if on_cpu else "other"] // (4 * widest)))  # 4 of them live at once
        with torch.no_grad():
            for b0 in range(0, n, step):
                indices = list(range(start + b0, start + min(n, b0 + step)))
                x = self.render(seed, indices, resolution)
                if resolution != size:
                    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
                out[b0:b0 + len(indices)] = x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).cpu()
        return out


def _per_image_dot(matrices: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """[b, c, w] times [b, w] -> [b, c], as products summed along w: a batched matrix
    product may pick another kernel for another batch size, which changes the last bits."""
    return (matrices * vectors[:, None, :]).sum(dim=-1)


@hookimpl
def register_generators(register: Any) -> None:
    register("stylegan-oriented", StyleGANOriented)
