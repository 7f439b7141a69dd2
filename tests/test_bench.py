"""`harness bench`: the training FLOPs it reports and the reference implementations its
ratios are measured against (every stage through the command line: test_device_tools)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

import harness
from helpers import cli

TINY_VIT = "{depth: 2, embed_dim: 32, num_heads: 2}"
REGISTRY = f"""
generators:
  small-kml: {{plugin: kml, params: {{base: dead-leaves, kmeans_size: 32}}}}
encoders:
  vit-bench: {{plugin: random-init, params: {{arch: vit_tiny_patch16_224, img_size: 16, patch_size: 8, model_kwargs: {TINY_VIT}}}}}
  dino-bench:
    plugin: dino
    params:
      data: dead-leaves
      recipe: tiny
      img_size: 16
      patch_size: 8
      model_kwargs: {TINY_VIT}
      out_dim: 64
      hidden_dim: 32
      bottleneck_dim: 16
      train_batch_size: 4
      dataset_size: 8
      source_size: 24
      local_crops_number: 2
      local_crop_size: 8
profiles:
  tiny-bench: {{encoders: [rgb, vit-bench, dino-bench], generators: [shaders, small-kml]}}
"""


def test_training_flops_follow_the_multicrop_formula(tmp_path: Path) -> None:
    """FLOPs per training image = 3 x the student's forward over all crops (forward and
    backward) + the teacher's forward over the two global crops, counted here per crop."""
    (tmp_path / "registry.yaml").write_text(REGISTRY)
    from torch.utils.flop_counter import FlopCounterMode

    from harness.config.registry import use_registry
    from harness.runner.context import RunContext

    registry = use_registry(tmp_path / "registry.yaml")
    encoder = registry.create("encoder", "dino-bench")
    measured = encoder.measure_training(RunContext(registry=registry, device="cpu"), steps=2, batch_size=None, budget_s=None)

    def forward_flops(model: torch.nn.Module, size: int) -> float:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(1, 3, size, size))
        return float(counter.get_total_flops())

    backbone = encoder.build_model(dynamic=True)
    d, hidden, bottleneck, out = 32, 32, 16, 64
    head = 2 * (d * hidden + hidden * hidden + hidden * bottleneck + bottleneck * out)
    global_crop = forward_flops(backbone, 16) + head
    local_crop = forward_flops(backbone, 8) + head
    expected = 3 * (2 * global_crop + 2 * local_crop) + 2 * global_crop
    assert abs(measured["train_gflops_per_image"] * 1e9 - expected) / expected < 0.1


def _where_it_ran(job: int) -> tuple[int, int]:
    """The process a job ran in and its torch threads (module-level: the pool's processes
    import it by name)."""
    import os

    return os.getpid(), torch.get_num_threads()


def _three_items(job: int) -> int:
    return 3


def test_reference_pipelines_run_in_worker_processes_of_one_torch_thread() -> None:
    """As a data loader's workers run them: threads would leave a pipeline that holds the
    GIL (per-image numpy) one core's rate, however many the machine has."""
    import os

    from harness.bench.timing import parallel_rate, worker_pool

    ran = list(worker_pool(2).map(_where_it_ran, range(4)))
    assert all(pid != os.getpid() and threads == 1 for pid, threads in ran), ran
    assert worker_pool(2) is worker_pool(2)  # started once, kept for every later timing
    assert parallel_rate(_three_items, [0] * 4, workers=2) > 0


def test_busy_share_is_busy_ticks_over_all_ticks_between_two_readings() -> None:
    from harness.bench.timing import busy_share, cpu_jiffies

    assert busy_share((10, 100), (40, 160)) == 0.5  # 30 of the 60 ticks between them busy
    assert busy_share((10, 100), (10, 100)) is None and busy_share(None, (40, 160)) is None
    reading = cpu_jiffies()
    assert reading is None or 0 <= reading[0] <= reading[1]


def test_a_profiles_busy_share_on_a_cpu_is_taken_over_the_profiled_wall_time() -> None:
    """A CPU operator's own time includes the profiler's work, so its busy share is taken
    over the profiled wall time, not the unprofiled one given (which a GPU's kernel times
    are measured against); the row gives both wall times."""
    import time

    import torch

    from harness.bench.timing import BUSY_ROW, operator_profile

    a = torch.rand(256, 256)

    def work() -> None:
        for _ in range(20):
            torch.mm(a, a)

    work()
    began = time.perf_counter()
    work()
    unprofiled_s = time.perf_counter() - began
    with operator_profile("cpu", unprofiled_s) as rows:
        work()
    busy = rows[0]
    assert busy["operator"] == BUSY_ROW and busy["calls"] >= 20
    assert busy["wall_ms"] == busy["profiled_wall_ms"] > 0
    # the row's figures are rounded (ms to 0.01, the share to 0.001): that bounds how far they can disagree
    rounding = 0.0005 + 0.005 * (1 + busy["share"]) / busy["profiled_wall_ms"]
    assert abs(busy["share"] - busy["self_ms"] / busy["profiled_wall_ms"]) <= rounding + 1e-9
    mm = next(row for row in rows[1:] if row["operator"] == "aten::mm")
    assert mm["calls"] == 20 and abs(mm["self_ms"] / busy["self_ms"] - mm["share"]) < 0.01


def test_a_generator_call_is_profiled_by_torch_operator_where_torch_does_its_work() -> None:
    """The profile stage lists the torch operators of the call it split into parts (same
    seed, same size): for random networks (torch convolutions and FFTs) their busy share
    and which take it; nothing for dead leaves, whose work is numpy's."""
    from harness.bench.profiling import generator_operators, time_split
    from harness.bench.timing import BUSY_ROW

    networks = harness.get_generator("stylegan-oriented")
    networks.sample(seed=1, n=8, size=32)
    parts, wall = time_split(networks, 8, 32)
    assert parts == [] and wall > 0  # it counts no parts of its own
    rows = generator_operators(networks, 8, 32, "cpu", wall)
    busy, operators = rows[0], rows[1:]
    assert busy["operator"] == BUSY_ROW and 0.01 <= busy["share"] <= 1.01
    assert busy["wall_ms"] == busy["profiled_wall_ms"] and abs(busy["share"] - busy["self_ms"] / busy["wall_ms"]) < 0.002
    assert any("conv" in row["operator"] or "fft" in row["operator"] for row in operators), operators
    assert sum(row["share"] for row in operators) <= 1.001
    assert sum(row["self_ms"] for row in operators) <= busy["self_ms"] + 0.01

    leaves = harness.get_generator("dead-leaves")
    leaves.sample(seed=1, n=8, size=32)
    assert generator_operators(leaves, 8, 32, "cpu", time_split(leaves, 8, 32)[1]) == []


def test_released_kml_reference_makes_the_same_images() -> None:
    """The bench's reference (numpy.unique + scikit-learn KMeans, per image) agrees with the
    batched generator when the base images are stored losslessly (PNG)."""
    from harness_plugins.generators.mixing import released_kml_image

    generator = harness.get_generator("kml-mixup", base="dead-leaves", kmeans_size=64)
    size = 32
    out = generator.sample(3, 3, size)
    base = generator.base_images(3, 3, size, 0)
    for k in range(3):
        blobs = []
        for image in base[k].permute(0, 2, 3, 1).numpy():
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            blobs.append(buffer.getvalue())
        reference = released_kml_image(blobs, size, kmeans_size=64)
        difference = np.abs(reference.astype(int) - out[k].permute(1, 2, 0).numpy().astype(int))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01


def test_dino_reference_data_path_makes_the_same_crops_as_ours() -> None:
    """DINO's PIL path (the train stage's reference) yields our crop set: 2 global and n
    local crops of the configured sizes, normalised with ImageNet's statistics (checked on
    a white image without colour jitter, which every crop, flip and blur keeps white)."""
    from harness_plugins.encoders._dino_augment import IMAGENET_MEAN, IMAGENET_STD, MultiCrop
    from harness_plugins.encoders._dino_reference import pil_multicrop

    multicrop = MultiCrop(global_size=32, local_size=16, n_local=3, jitter_p=0.0, grayscale_p=0.0)
    reference = pil_multicrop(multicrop)(Image.fromarray(np.full((48, 48, 3), 255, np.uint8)))
    white = torch.full((1, 3, 48, 48), 255, dtype=torch.uint8)
    ours = [c[0] for c in multicrop.apply(white, multicrop.draw(torch.Generator().manual_seed(0), 1, 48, 48))]
    assert [tuple(c.shape) for c in reference] == [tuple(c.shape) for c in ours] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    expected = ((1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).view(3, 1, 1)
    for crop in [reference[0], *reference[2:], ours[0], *ours[2:]]:  # the second global crop may be solarised
        torch.testing.assert_close(crop, expected.expand_as(crop), atol=1e-5, rtol=0)


SLEEPY_REGISTRY = """
plugins: [fake_plugins]
generators:
  quick: {plugin: sleepy-generator}
  slow: {plugin: sleepy-generator, params: {seconds: 120}}
profiles:
  sleepy: {generators: [quick, slow, quick], bench: {sizes: [16]}}
"""


def test_a_stage_stopped_by_its_time_limit_keeps_the_rows_it_measured(tmp_path: Path) -> None:
    """`--time-limit`: the stage stops while the slow generator sleeps; the row measured
    before stays, the interrupted one says why, nothing after it is measured, and the
    entry and the report say the stage was cut off. The log says when each row came."""
    (tmp_path / "registry.yaml").write_text(SLEEPY_REGISTRY)
    report = tmp_path / "PERFORMANCE.md"
    done = cli("--registry", str(tmp_path / "registry.yaml"), "bench", "generators", "--profile", "sleepy", "--quick",
               "--time-limit", "5", "--report", str(report), timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "generators: 2 rows (stopped by its time limit of 5 s after 2 rows)" in done.stdout
    quick_at, slow_at = (int(re.search(rf"generators: {name} 16 at (\d+) s", done.stderr)[1]) for name in ("quick", "slow"))
    assert quick_at < 5 <= slow_at
    entry = json.loads((tmp_path / "performance.json").read_text())["generators"]
    first, interrupted = entry["rows"]
    assert first["generator"] == "quick" and first["images_per_s"] > 0
    assert interrupted["generator"] == "slow" and "StageTimeLimit" in interrupted["error"]
    assert entry["cut_off"] == "stopped by its time limit of 5 s after 2 rows"
    assert "**Cut off:** stopped by its time limit of 5 s" in report.read_text()


def test_a_generator_row_names_the_warnings_the_generator_gave_while_timed(tmp_path: Path) -> None:
    """A rate can be of something other than what was asked for (a pipeline the driver
    cannot give is drawn instead, with a warning): the row names each warning once; a
    generator that gave none has no such column."""
    registry = SLEEPY_REGISTRY.replace(
        "  slow: {plugin: sleepy-generator, params: {seconds: 120}}",
        "  warned: {plugin: sleepy-generator, params: {warns: 'compute shaders missing, drawn instead'}}",
    ).replace("generators: [quick, slow, quick]", "generators: [quick, warned]")
    (tmp_path / "registry.yaml").write_text(registry)
    done = cli("--registry", str(tmp_path / "registry.yaml"), "bench", "generators", "--profile", "sleepy", "--quick",
               "--report", str(tmp_path / "PERFORMANCE.md"), timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    quick, warned = json.loads((tmp_path / "performance.json").read_text())["generators"]["rows"]
    assert "warnings" not in quick and warned["images_per_s"] > 0
    assert warned["warnings"] == "RuntimeWarning: compute shaders missing, drawn instead"
    assert "RuntimeWarning: compute shaders missing, drawn instead" in (tmp_path / "PERFORMANCE.md").read_text()


def test_a_stage_killed_midway_keeps_the_rows_it_measured(tmp_path: Path) -> None:
    """Rows are written as they are measured: a stage killed while measuring its second
    row leaves its first, marked as not finished."""
    import signal
    import subprocess
    import sys
    import time

    from harness.bench.report import UNFINISHED
    from helpers import cli_env

    (tmp_path / "registry.yaml").write_text(SLEEPY_REGISTRY)
    state = tmp_path / "performance.json"
    bench = subprocess.Popen(
        [sys.executable, "-m", "harness", "--registry", str(tmp_path / "registry.yaml"), "bench", "generators",
         "--profile", "sleepy", "--quick", "--report", str(tmp_path / "PERFORMANCE.md")],
        env=cli_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while not state.exists() and time.monotonic() < deadline and bench.poll() is None:
            time.sleep(0.2)
    finally:
        bench.send_signal(signal.SIGKILL)
        bench.wait()
    entry = json.loads(state.read_text())["generators"]
    assert [row["generator"] for row in entry["rows"]] == ["quick"] and entry["rows"][0]["images_per_s"] > 0
    assert entry["cut_off"] == UNFINISHED


def test_a_figure_cut_by_the_time_limit_says_so_behind_a_wrapping_error() -> None:
    """A compiler wraps what its backend raised: the time limit behind it is what the
    figure names, so that the stage knows to measure nothing more."""
    from harness.bench.timing import StageTimeLimit, cut_by_time_limit, why_missing

    try:
        try:
            raise StageTimeLimit("the stage's time limit of 20 s came first")
        except StageTimeLimit as limit:
            raise RuntimeError("backend='sleeping' raised") from limit
    except RuntimeError as wrapped:
        figure = why_missing(wrapped)
    assert figure == "failed: StageTimeLimit: the stage's time limit of 20 s came first" and cut_by_time_limit(figure)
    assert why_missing(ValueError("no compiler")) == "failed: ValueError: no compiler"
    assert not cut_by_time_limit(why_missing(ValueError("no compiler"))) and not cut_by_time_limit(3.0)


TRAIN_LIMIT_S = 300  # far above the eager figures of `dino-bench` (about 4 s on a 2-core CPU)


def overrun_now() -> None:
    """Work slower than the stage's time limit: the stage's own alarm is brought forward
    to now, so its handler interrupts the wait as it would at the limit, without the test
    waiting out the limit."""
    import signal
    import time

    signal.setitimer(signal.ITIMER_REAL, 0.001)
    time.sleep(600)


@pytest.mark.parametrize("overrun", ["compiling", "the data alone", "writing the files"])
def test_the_train_stage_keeps_its_eager_figures_when_what_follows_them_overruns_its_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrun: str,
) -> None:
    """A compiler, data workers, or the pre-rendering of the files, slower than the
    stage's time limit (here ones that sleep past it: `overrun_now`) cost the figures measured from then on
    only: the row keeps the figures measured before, and says why the others are
    missing."""
    import harness.streaming

    from harness.bench.report import run_benchmarks
    from harness.config.registry import use_registry
    from harness_plugins.encoders import _dino_bench

    def sleeping_backend(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        overrun_now()
        return graph.forward

    torch_compile = torch.compile
    backend = sleeping_backend if overrun == "compiling" else "aot_eager"  # eager kernels: the compiler's take minutes here
    monkeypatch.setattr(torch, "compile", lambda module, **options: torch_compile(module, **{**options, "backend": backend}))
    if overrun == "the data alone":
        monkeypatch.setattr(_dino_bench, "data_alone_rate", lambda *args: overrun_now())
    if overrun == "writing the files":
        monkeypatch.setattr(harness.streaming, "write_imagefolder", lambda *args, **kwargs: overrun_now())
    registry_text = REGISTRY.replace(
        "  tiny-bench: {encoders: [rgb, vit-bench, dino-bench], generators: [shaders, small-kml]}",
        "  train-bench: {encoders: [dino-bench], bench: {compile: true, train_steps: 2, train_budget_s: 1, prerendered: jpeg}}",
    )
    (tmp_path / "registry.yaml").write_text(registry_text)
    registry = use_registry(tmp_path / "registry.yaml")
    run_benchmarks(registry, ["train"], tmp_path / "PERFORMANCE.md", device="cpu", profile="train-bench", time_limit_s=TRAIN_LIMIT_S)
    entry = json.loads((tmp_path / "performance.json").read_text())["train"]
    (row,) = entry["rows"]
    assert row["encoder"] == "dino-bench" and row["images_per_s"] > 0 and row["model_alone_images_per_s"] > 0
    missing = list(_dino_bench.PRERENDERED_FIGURES)
    if overrun == "writing the files":
        assert row["compiled_images_per_s"] > 0 and row["prerendered_under_compile"]
    else:
        missing += ["compile_s", "compiled_images_per_s", "compiled_model_images_per_s"]
    if overrun == "the data alone":
        missing.append("data_alone_images_per_s")
        assert "taking_turns_images_per_s" not in row
    else:
        assert row["data_alone_images_per_s"] > 0 and row["taking_turns_images_per_s"] > 0
    for figure in missing:
        assert row[figure].startswith("failed:") and "StageTimeLimit" in row[figure], figure
    assert entry["cut_off"] == f"stopped by its time limit of {TRAIN_LIMIT_S:g} s after 1 rows"


def test_sampling_rate_times_the_first_count_whose_call_is_long_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call costing a fixed 2 ms plus 0.1 ms an image reaches 0.1 s at 1,024 images, the
    first such count doubling from 8: that is the count timed, as calling every count
    in turn would find, after fewer calls (a short call skips the counts its time,
    scaled, says are short too)."""
    import time

    from harness.bench import generators

    monkeypatch.setattr(generators, "MIN_SECONDS", 0.1)
    calls: list[int] = []

    def sample(n: int) -> None:
        calls.append(n)
        time.sleep(0.002 + 0.0001 * n)

    n, rate = generators.sampling_rate(sample, 224, quick=False)
    first_long_enough = next(8 * 2**k for k in range(20) if 0.002 + 0.0001 * 8 * 2**k >= 0.1)
    assert n == first_long_enough == 1024
    searched = calls[1 : calls.index(n) + 1]  # after the first-use call, up to the first call of n
    assert searched[-1] == n and len(searched) < 8  # each count in turn: 8, 16, ..., 1,024
    assert 0.5 * n / (0.002 + 0.0001 * n) < rate <= n / (0.002 + 0.0001 * n)


def test_the_embed_stage_compiles_a_copy_of_the_module_block_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """`compiled_copy` compiles each block of a transformer's run of alike blocks in a
    copy (the encoder's own module stays eager) and computes what the module computes; a
    module without such a run is compiled whole."""
    import timm

    from harness.bench.embed import compiled_copy

    compiled: list[Any] = []
    torch_compile = torch.compile

    def eager_compile(target: Any, **options: Any) -> Any:
        compiled.append(target)
        return torch_compile(target, **{**options, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", eager_compile)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8, depth=3).eval()
    copy = compiled_copy(model)
    assert len(compiled) == 3  # one per block
    assert all(block._compiled_call_impl is not None for block in copy.blocks)
    assert all(block._compiled_call_impl is None for block in model.blocks)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(copy(x), model(x), rtol=1e-4, atol=1e-5)
    linear = torch.nn.Linear(4, 2)
    assert isinstance(compiled_copy(linear), torch._dynamo.eval_frame.OptimizedModule) and len(compiled) == 4


def test_the_module_alone_is_timed_in_the_precision_the_encoder_embeds_in() -> None:
    """The embed stage times the module alone as `embed` runs it: under bfloat16 autocast
    for an encoder whose `precision` is bfloat16, in float32 otherwise."""
    from harness.bench.embed import module_rate

    model = torch.nn.Linear(8, 4)  # acts on the last axis of the [batch, 3, 8, 8] input
    computed_in: list[torch.dtype] = []
    model.register_forward_hook(lambda module, inputs, output: computed_in.append(output.dtype))
    for precision, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        computed_in.clear()
        assert module_rate(model, 8, "cpu", batch=2, repeats=1, precision=precision) > 0
        assert computed_in and set(computed_in) == {dtype}
