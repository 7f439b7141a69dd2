"""The embed stage: embedding images/s of the profile's encoders that need no training,
with FLOPs per image and, on a GPU, the fraction of the card's limit reached in the
encoder's `precision` (bfloat16 or float32).

Three figures per encoder where it has a torch module: end to end (`embed` on uint8
images in host memory: transfer, resize, normalisation and the forward pass), the
module alone on a batch already on the device, in the encoder's precision, and (with
the profile's `bench.compile`) the module under `torch.compile`, block by block
(`compiled_copy`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from harness.bench.targets import LIMIT_COLUMN
from harness.bench.timing import best_time, peak_flops, synchronizer, why_missing
from harness.bench.train import is_trainable
from harness.device import Precision, forward_precision
from harness.runner.context import RunContext

if TYPE_CHECKING:
    from harness.config.schema import ProfileSpec
    from harness.config.registry import Registry
    from harness.kinds import Encoder

MODULE_BATCH = 512  # images per forward pass when the module alone is timed
LIMIT_COLUMNS = {"bfloat16": LIMIT_COLUMN, "float32": "float32_limit_images_per_s"}


def flops_per_image(encoder: Encoder, size: int) -> float | None:
    """Forward FLOPs of one image through the encoder's torch module (None without one)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = encoder.torch_module()
    if model is None:
        return None
    parameter = next(model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, size, size, device=parameter.device, dtype=parameter.dtype))
    return float(counter.get_total_flops())


def compiled_copy(model: Any) -> Any:
    """A copy of `model` under torch.compile, block by block where it has a run of alike
    blocks (a transformer's): the compiler traces one block, whose code serves them all,
    and the layers between the blocks stay eager. Compiling then takes a fraction of the
    whole network's time (ViT-S/16 inference, a batch of 8 on a 2-core CPU: 7.3 s instead
    of 18.7 s before the first output; later batches 4 % slower). A model without such a
    run is compiled whole."""
    import copy

    import torch

    model = copy.deepcopy(model)
    runs = [
        module for module in model.modules()
        if isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential)) and len(module) > 1 and len({type(m) for m in module}) == 1
    ]
    if not runs:
        return torch.compile(model)
    for block in max(runs, key=len):
        block.compile()
    return model


def module_rate(model: Any, size: int, device: str, batch: int, repeats: int, precision: Precision, compiled: bool = False) -> float:
    """images/s of the module alone on one batch already on `device`, computing in
    `precision` as the encoder's `embed` does; with `compiled`, of its `compiled_copy`."""
    import torch

    forward = compiled_copy(model) if compiled else model
    x = torch.randn(batch, 3, size, size, device=device)
    sync = synchronizer(device)

    def run() -> None:
        with torch.inference_mode(), forward_precision(device, precision):
            forward(x)
        sync()

    if compiled:
        run()  # compilation happens here, outside the timing
    return batch / best_time(run, repeats)


def bench_embed(registry: Registry, profile: ProfileSpec, quick: bool, device: str) -> Iterator[dict[str, Any]]:
    """Embedding images/s of the profile's encoders that need no training (a trained
    encoder embeds as fast as its architecture at random init), on images of the
    encoder's own input size."""
    import torch

    spec = profile.bench
    for name in [n for n in profile.encoders if not is_trainable(registry, n)]:
        encoder = registry.create("encoder", name)
        try:
            encoder.prepare(RunContext(registry=registry, device=device))
        except Exception as exc:
            yield {"encoder": name, "error": f"{type(exc).__name__}: {exc}"}
            continue
        size = encoder.input_size
        n = spec.embed_images
        repeats = 1 if quick else 3
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
        seconds = best_time(lambda: encoder.embed(images), repeats)
        precision = encoder.precision
        row: dict[str, Any] = {
            "encoder": name, "arch": encoder.architecture, "precision": precision, "input": size, "images": n,
            "images_per_s": round(n / seconds, 1),
        }
        model = encoder.torch_module()
        flops = flops_per_image(encoder, size)
        if model is not None:
            batch = min(n, MODULE_BATCH)
            row["module_images_per_s"] = round(module_rate(model, size, device, batch, repeats, precision), 1)
            if spec.compile and not quick:
                try:
                    row["compiled_images_per_s"] = round(module_rate(model, size, device, batch, repeats, precision, compiled=True), 1)
                except Exception as exc:  # a compiler missing or failing: the other figures stand
                    row["compiled_images_per_s"] = why_missing(exc)
        if flops:
            row["gflops_per_image"] = float(f"{flops / 1e9:.4g}")
            peak = peak_flops(device, precision)
            if peak:
                row[LIMIT_COLUMNS[precision]] = round(peak / flops, 0)
                row["fraction_of_limit"] = round(n / seconds * flops / peak, 3)
                if "module_images_per_s" in row:
                    row["module_fraction_of_limit"] = round(row["module_images_per_s"] * flops / peak, 3)
        yield row
