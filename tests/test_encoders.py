"""Encoders: DINO training (checkpoints, resume, DDP), pretrained checkpoints, white-box.

Everything goes through `harness.get_encoder` and the command line, with a temporary
registry of tiny instances. Training data comes from a small generator defined here and
loaded as a registry-listed plugin module (the way a third party adds one), so these
tests do not depend on the speed of the built-in generators.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import harness
from harness.config.registry import load_registry, use_registry
from harness.errors import HarnessError
from harness.kinds import ParamsError, TrainingCost
from harness.runner.context import RunContext

GENERATOR_MODULE = "encoder_test_generators"
GENERATOR_SOURCE = '''
"""A fast test generator: coloured rectangles on a coloured background."""
import numpy as np
import torch

from harness.hookspecs import hookimpl
from harness.kinds import Generator


class Rectangles(Generator):
    """Coloured rectangles (tests only)."""

    def sample(self, seed, n, size, start=0):
        out = np.empty((n, 3, size, size), np.uint8)
        for k in range(n):
            rng = np.random.default_rng([seed, start + k])
            image = np.empty((3, size, size), np.uint8)
            image[:] = rng.integers(0, 256, (3, 1, 1))
            for _ in range(6):
                y0, x0 = rng.integers(0, size, 2)
                h, w = rng.integers(1, size // 2 + 1, 2)
                image[:, y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, (3, 1, 1))
            out[k] = image
        return torch.from_numpy(out)


@hookimpl
def register_generators(register):
    register("test-rectangles", Rectangles)
'''

TINY_VIT = "{depth: 2, embed_dim: 32, num_heads: 2}"
DINO_PARAMS = (
    "data: rects, recipe: tiny, img_size: 16, patch_size: 8, "
    f"model_kwargs: {TINY_VIT}, out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, "
    "train_batch_size: 8, steps: 6, dataset_size: null, steps_per_epoch: 2, warmup_epochs: 1, source_size: 24, "
    "local_crops_number: 2, local_crop_size: 8, drop_path: 0.1, checkpoint_every: 2"
)
REGISTRY = f"""
plugins: [{GENERATOR_MODULE}]
generators:
  rects: {{plugin: test-rectangles}}
encoders:
  dino-test: {{plugin: dino, params: {{{DINO_PARAMS}}}}}
  dino-missing-data: {{plugin: dino, params: {{data: no-such-generator, recipe: tiny}}}}
  vit-test:
    plugin: random-init
    params: {{arch: vit_tiny_patch16_224, img_size: 16, patch_size: 8, model_kwargs: {TINY_VIT}, seed: 3}}
  sift-test:
    plugin: sift
    params: {{size: 32, words: 8, vocab_generator: rects, vocab_images: 8}}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("encoders")
    (root / f"{GENERATOR_MODULE}.py").write_text(GENERATOR_SOURCE)
    registry_path = root / "registry.yaml"
    registry_path.write_text(REGISTRY)
    sys.path.insert(0, str(root))
    yield {"root": root, "registry": registry_path}
    sys.path.remove(str(root))


@pytest.fixture(autouse=True)
def _test_registry(_fresh_registry: None, setup: dict) -> None:
    use_registry(setup["registry"])


def context(setup: dict, cache: str) -> RunContext:
    registry = use_registry(setup["registry"])
    return RunContext(registry=registry, device="cpu", cache_dir=setup["root"] / cache, progress=False)


def digits_like(n: int = 6, size: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8))


@pytest.fixture(scope="module")
def trained(setup: dict) -> dict:
    """One uninterrupted tiny DINO run (6 steps), shared by the tests below."""
    ctx = context(setup, "cache-trained")
    encoder = harness.get_encoder("dino-test")
    encoder.prepare(ctx)
    return {"ctx": ctx, "encoder": encoder}


# ---------------------------------------------------------------------------- DINO
def test_dino_writes_checkpoint_and_embeds_deterministically(setup: dict, trained: dict) -> None:
    encoder, ctx = trained["encoder"], trained["ctx"]
    folder = ctx.cache_path("weights", encoder.weights_key)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "teacher.safetensors", "training.json"]
    info = encoder.training_info
    assert info["finished"] and info["steps"] == 6 and info["images_seen"] == 48
    assert len(info["loss"]) == 6 and all(np.isfinite(info["loss"]))
    assert info["wall_time_s"] > 0 and info["world_size"] == 1
    assert json.loads((folder / "training.json").read_text())["loss"] == info["loss"]
    assert encoder.trainable and encoder.group == "procedural"

    images = digits_like()
    first = encoder.embed(images)
    assert first.shape == (6, 32) and first.dtype == torch.float32
    assert torch.equal(first, encoder.embed(images))

    # a new instance loads the cached weights instead of training again
    again = harness.get_encoder("dino-test")
    again.step_callback = lambda step, loss: pytest.fail("a finished encoder was trained again")
    again.prepare(context(setup, "cache-trained"))
    assert torch.equal(again.embed(images), first)
    assert again.training_info["loss"] == info["loss"]

    # the weights are the trained teacher, not the seeded initialisation
    untrained = harness.get_encoder(
        "random-init", arch="vit_tiny_patch16_224", img_size=16, patch_size=8, seed=0,
        model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2},
    )
    assert not torch.allclose(untrained.embed(images), first, atol=1e-3)


def test_resume_reproduces_the_uninterrupted_run(setup: dict, trained: dict) -> None:
    ctx = context(setup, "cache-resume")
    interrupted = harness.get_encoder("dino-test")

    class Interrupt(Exception):
        pass

    def stop(step: int, loss: float) -> None:
        if step == 4:  # after 5 steps; the last checkpoint is after step 4 (checkpoint_every 2)
            raise Interrupt

    interrupted.step_callback = stop
    with pytest.raises(Interrupt):
        interrupted.prepare(ctx)
    folder = ctx.cache_path("weights", interrupted.weights_key)
    assert (folder / "checkpoint.pt").exists() and not (folder / "teacher.safetensors").exists()
    assert json.loads((folder / "training.json").read_text())["steps"] == 4

    resumed = harness.get_encoder("dino-test")
    resumed.prepare(context(setup, "cache-resume"))
    info = resumed.training_info
    assert info["resumed_from"] == [4]
    np.testing.assert_allclose(info["loss"], trained["encoder"].training_info["loss"], rtol=1e-6, atol=0)
    images = digits_like()
    torch.testing.assert_close(resumed.embed(images), trained["encoder"].embed(images), rtol=1e-5, atol=1e-5)


def test_in_memory_pool_trains_exactly_as_rendering_on_demand(setup: dict) -> None:
    """A finite dataset held in memory (filled in batched blocks) gives the same images,
    hence the same training, as rendering every image when a step asks for it."""
    finite = {"dataset_size": 12, "steps_per_epoch": None}  # 12 images, 1 step per epoch
    pooled = harness.get_encoder("dino-test", **finite)
    pooled.prepare(context(setup, "cache-pooled"))
    on_demand = harness.get_encoder("dino-test", **finite, memory_cache_mb=0)
    assert on_demand.weights_key == pooled.weights_key  # a run option, not part of the result
    on_demand.prepare(context(setup, "cache-on-demand"))
    assert pooled.training_info["steps"] == 6
    assert on_demand.training_info["loss"] == pooled.training_info["loss"]
    images = digits_like()
    assert torch.equal(on_demand.embed(images), pooled.embed(images))


def test_run_keeps_the_training_summary_and_the_leaderboard_shows_it(setup: dict, tmp_path: Path) -> None:
    from helpers import cli

    out = tmp_path / "out"
    env = {"HARNESS_CACHE": str(setup["root"] / "cache-trained"), "PYTHONPATH": str(setup["root"])}
    result = cli("--registry", str(setup["registry"]), "run", "--encoders", "dino-test", "--tasks", "knn-digits",
                 "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "training" / "dino-test.json").read_text())
    assert summary["steps"] == 6 and summary["images_seen"] == 48 and len(summary["loss"]) == 6
    board = (out / "LEADERBOARD.md").read_text()
    training = board[board.index("## Training"):]
    row = next(line for line in training.splitlines() if line.startswith("| dino-test"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:4] == ["rects", "6", "48"]
    assert cells[6:8] == [f"{summary['loss'][0]:.2f}", f"{np.mean(summary['loss']):.2f}"]  # first, mean of the last 10 (all 6)
    assert (out / "figures" / "training_loss.png").exists()


def test_weights_key_covers_training_but_not_evaluation_options(setup: dict) -> None:
    use_registry(setup["registry"])
    base = harness.get_encoder("dino-test")
    assert harness.get_encoder("dino-test", layer=0).weights_key == base.weights_key
    assert harness.get_encoder("dino-test", layer=0).key != base.key
    assert harness.get_encoder("dino-test", checkpoint_every=5, batch_size=3).key == base.key
    for change in ({"lr": 1e-4}, {"seed": 1}, {"steps": 7}, {"data": {"folder": "x"}}, {"recipe": "paper"}):
        assert harness.get_encoder("dino-test", **change).weights_key != base.weights_key, change
    with pytest.raises(HarnessError, match="no_such_option"):
        harness.get_encoder("dino-test", no_such_option=1)


def test_unresolvable_data_generator_is_named(setup: dict) -> None:
    with pytest.raises(HarnessError, match=r"encoders\.dino-missing-data\.params.*no-such-generator"):
        harness.get_encoder("dino-missing-data")


def test_unknown_or_ill_typed_parameters_are_refused_naming_the_field(setup: dict) -> None:
    with pytest.raises(ParamsError, match=r"sift\.params\.typo_param: unknown parameter"):
        harness.get_encoder("sift", typo_param=1)
    with pytest.raises(ParamsError, match=r"\.lrr: unknown parameter; did you mean 'lr'"):
        harness.get_encoder("dino-test", lrr=1e-3)
    with pytest.raises(ParamsError, match=r"\.recipe: "):
        harness.get_encoder("dino-test", recipe="huge")
    with pytest.raises(ParamsError, match=r"\.data"):
        harness.get_encoder("dino-test", data={"path": "x"})
    with pytest.raises(ParamsError, match=r"\.lr: "):
        harness.get_encoder("dino-test", lr=None)  # only the recipe-defined fields may be null
    with pytest.raises(ParamsError, match=r"\.crop_fraction: "):
        harness.get_encoder("vit-test", crop_fraction=1.5)
    with pytest.raises(ParamsError, match="needs `checkpoint`"):
        harness.get_encoder("pretrained", arch="vit_tiny_patch16_224")


def test_every_recipe_value_is_a_declared_valid_parameter() -> None:
    from harness_plugins.encoders._dino_recipes import RECIPES

    dino = harness.get_encoder("dino-test")
    for recipe, values in RECIPES.items():
        params = type(dino).Params(data="rects", recipe=recipe, **values)
        assert params.model_fields_set >= set(values), recipe


def test_recipe_values_apply_unless_set(setup: dict) -> None:
    from harness_plugins.encoders._dino_recipes import RECIPES

    paper = harness.get_encoder("dino-test", recipe="paper").training_config()
    assert paper["out_dim"] == 64 and paper["lr"] == RECIPES["paper"]["lr"]  # out_dim is set by dino-test
    endless = harness.get_encoder("dino-test").training_config()
    assert endless["dataset_size"] is None  # set to null: an endless stream, not the recipe's 4096
    assert harness.get_encoder("dino-test", recipe="tiny", lr=RECIPES["tiny"]["lr"]).weights_key == harness.get_encoder("dino-test").weights_key


def test_encoder_interface(setup: dict) -> None:
    dino = harness.get_encoder("dino-test")
    assert dino.architecture == "vit_tiny_patch16_224 16px/8 depth=2 embed_dim=32 num_heads=2" and dino.input_size == 16
    assert dino.training_cost() == TrainingCost(images=6 * 8, recipe="tiny", batch_size=8)
    paper = harness.get_encoder("dino-test", recipe="paper", steps=None, steps_per_epoch=None, dataset_size=1_300_000, train_batch_size=512)
    assert paper.training_cost() == TrainingCost(images=100 * (1_300_000 // 512) * 512, recipe="paper", batch_size=512)
    vit = harness.get_encoder("vit-test")
    assert vit.training_cost() is None and vit.torch_module() is None
    vit.prepare()
    assert vit.torch_module() is vit.model
    sift = harness.get_encoder("sift-test")
    assert sift.architecture is None and sift.training_cost() is None


def test_batches_go_a_batch_ahead_and_shrink_when_the_gpu_runs_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """An encoder's forward passes (`in_batches`) send batch k + 1 on its way before
    fetching batch k's output, so that on a GPU its copy runs beside batch k's work; a
    batch too large for the memory is retried at half the size (the batch sent at the
    old size dropped), a fixed batch size is not; the output is the function's over
    every image, in order."""
    from harness_plugins.encoders import _shared

    events: list[tuple[Any, ...]] = []

    class Recording(_shared.Stager):
        def send(self, batch: torch.Tensor) -> torch.Tensor:
            events.append(("send", int(batch[0]), len(batch)))
            return batch

    class Output:
        def __init__(self, values: torch.Tensor) -> None:
            self.values = values

        def cpu(self) -> torch.Tensor:
            events.append(("fetch", int(self.values[0]) // 2))
            return self.values

    def doubled(batch: torch.Tensor) -> Output:
        if len(batch) > 4:
            raise torch.cuda.OutOfMemoryError("4 images fit")
        events.append(("run", int(batch[0]), len(batch)))
        return Output(batch * 2)

    monkeypatch.setattr(_shared, "Stager", Recording)
    images = torch.arange(10)
    out, size = _shared.in_batches(images, doubled, None, 8)
    assert torch.equal(out, images * 2) and size == 4
    assert events == [
        ("send", 0, 8),  # too large: dropped, halved
        ("send", 0, 4), ("run", 0, 4), ("send", 4, 4), ("fetch", 0),
        ("run", 4, 4), ("send", 8, 2), ("fetch", 4),
        ("run", 8, 2), ("fetch", 8),
    ]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        _shared.in_batches(images, doubled, 8, 8)


@pytest.mark.parametrize("workers", [0, 1])
def test_measure_training(setup: dict, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """Training rates, the model's rate under torch.compile included (`compiled=True`, a
    profile's `bench.compile`; with eager kernels here: the compiler's own take minutes
    on a CPU), the data alone and the rates taking turns with the model, and one step's
    descent; nothing is saved. The eager and the compiled timings, and the data alone
    between them, take consecutive steps from one stream of batches (the same data
    workers), which is stopped at the end. Then (`prerendered="jpeg"`, a profile's
    `bench.prerendered`) a second stream serves the generator's images written as JPEG
    files: what PIL decodes of what it encodes at quality 75."""
    import io

    from PIL import Image

    from harness_plugins.encoders import _dino_bench

    torch_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **options: torch_compile(module, **{**options, "backend": "aot_eager"}))
    step_batches = _dino_bench.step_batches
    streams: list[Any] = []
    served: list[list[tuple[int, torch.Tensor, list[int]]]] = []

    def recorded_batches(*args: Any, **kwargs: Any) -> Any:
        batches: list[tuple[int, torch.Tensor, list[int]]] = []
        served.append(batches)

        def serve() -> Any:
            for step, images, indices in step_batches(*args, **kwargs):
                batches.append((step, images, indices))
                yield step, images, indices
        streams.append(serve())
        return streams[-1]

    monkeypatch.setattr(_dino_bench, "step_batches", recorded_batches)
    ctx = context(setup, "cache-throughput")
    encoder = harness.get_encoder("dino-test", num_workers=workers)
    measured = encoder.measure_training(ctx, steps=2, batch_size=None, budget_s=None, compiled=True, prerendered="jpeg")
    assert measured["data_workers"] == workers
    warmup = _dino_bench.warmup_steps(workers)
    # eager steps, the data alone, compiled steps: one stream; the files: a second
    taken = 2 * (warmup + 2) + _dino_bench.data_alone_batches(workers)
    assert len(streams) == 2 and [step for step, _, _ in served[0]] == list(range(taken))
    assert [step for step, _, _ in served[1]] == list(range(warmup + 2 + _dino_bench.data_alone_batches(workers)))
    assert all(stream.gi_frame is None for stream in streams)  # closed: their workers stopped
    source = encoder.open_source()
    _, images, indices = served[1][0]
    for image, index in zip(images, indices):
        rendered = source.generator.sample(source.seed, 1, source.size, start=index)[0].permute(1, 2, 0).numpy()
        encoded = io.BytesIO()
        Image.fromarray(rendered).save(encoded, format="JPEG", quality=75)
        assert np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(Image.open(encoded)))
    epoch = _dino_bench.PRERENDERED_BATCHES
    assert sorted(i for _, _, batch in served[1][:epoch] for i in batch) == list(range(epoch * len(indices)))  # every file once
    assert measured["prerendered_format"] == "jpeg" and measured["prerendered_under_compile"]
    assert measured["prerendered_data_workers"] == workers
    for figure in _dino_bench.PRERENDERED_FIGURES:
        assert isinstance(measured[figure], float) and measured[figure] > 0, figure
    turns = 1 / (1 / measured["model_alone_images_per_s"] + 1 / measured["data_alone_images_per_s"])
    assert abs(measured["taking_turns_images_per_s"] - turns) <= 0.1
    compiled_turns = 1 / (1 / measured["compiled_model_images_per_s"] + 1 / measured["data_alone_images_per_s"])
    assert abs(measured["compiled_taking_turns_images_per_s"] - compiled_turns) <= 0.1
    assert isinstance(measured["compiled_model_images_per_s"], float) and measured["compiled_model_images_per_s"] > 0
    assert isinstance(measured["compiled_images_per_s"], float) and measured["compiled_images_per_s"] > 0
    assert isinstance(measured["compile_s"], float) and measured["compile_s"] >= 0
    assert measured["images_per_s"] > 0 and measured["recipe"] == "tiny" and "cpu" in measured["device"]
    assert measured["arch"] == encoder.architecture and measured["train_batch_size"] == 8
    assert measured["one_step_descends"] and measured["one_step_loss_after"] < measured["one_step_loss_before"]
    assert not (setup["root"] / "cache-throughput").exists()  # nothing is saved


def dino_test_trainer(**params: Any) -> tuple[Any, torch.Tensor]:
    """A `Trainer` of the `dino-test` encoder (with these parameters) on the CPU, and its
    first batch."""
    from harness_plugins.encoders._dino_data import StreamPlan
    from harness_plugins.encoders._dino_train import Distributed, Trainer

    encoder = harness.get_encoder("dino-test", **params)
    source = encoder.open_source()
    cfg = encoder.resolved_schedule(source)
    trainer = Trainer(cfg, lambda drop_path: encoder.build_model(drop_path, dynamic=True), "cpu", Distributed())
    return trainer, source.fetch(StreamPlan(cfg["data_seed"], trainer.global_batch, 0, 1, cfg["dataset_size"]).indices(0))


def test_one_step_descent_changes_the_student_alone(setup: dict) -> None:
    """The descent probe puts the teacher and the centre back: with a learning rate of 0
    the student does not move either, so the loss after the step is the loss before."""
    from harness_plugins.encoders._dino_bench import one_step_descent

    trainer, images = dino_test_trainer()
    trainer.step(0, images)  # the centre is no longer zero
    trainer.lr[:] = 0.0
    before, after = one_step_descent(trainer, images)
    assert before == after == trainer.loss(0, images)
    trainer.lr[:] = 1e-4
    before, after = one_step_descent(trainer, images)
    assert after < before


def test_one_step_descent_follows_the_batch_gradient_not_the_moments(setup: dict) -> None:
    """AdamW's moments left pointing up this batch's loss (the negated first moment of a
    step on it) would carry the probe's step uphill: the probe clears them, so its step
    is the one this batch's gradient asks for, and the loss falls.

    The schedule runs at a tenth of its rate, where a step along the gradient is short
    enough to lower the loss; at the full rate a step on this tiny model can overshoot
    (under torch 2.6, whose loss differs once stochastic depth is on, it rose 0.015)."""
    from harness_plugins.encoders._dino_bench import one_step_descent

    trainer, images = dino_test_trainer()
    trainer.lr[:] *= 0.1
    trainer.step(0, images)
    probe_step, probe_lr = int(np.argmax(trainer.lr)), float(trainer.lr.max())
    trainer.lr[probe_step] = 0.0
    trainer.step(probe_step, images)  # moments of this batch's gradient at the probe's step
    trainer.lr[probe_step] = probe_lr
    for state in trainer.optimizer.state.values():
        state["exp_avg"].mul_(-9.0)
    before, after = one_step_descent(trainer, images)
    assert after < before


def test_compiled_training_takes_the_eager_steps(setup: dict) -> None:
    """`compile` compiles each block and head (torch.compile with eager kernels here: the
    compiler's kernels need minutes on a CPU); without drop path, whose draws the compiled
    code makes its own way, the steps stay the eager ones; checkpoints keep the module
    names; `compile` is in the weights' key."""
    torch._dynamo.reset()
    eager, images = dino_test_trainer(drop_path=0.0)
    compiled, _ = dino_test_trainer(drop_path=0.0)
    compiled.compile(backend="aot_eager")
    compiled_modules = [*compiled.student.backbone.blocks, *compiled.teacher.backbone.blocks, compiled.student.head, compiled.teacher.head]
    assert all(module._compiled_call_impl is not None for module in compiled_modules)
    eager_losses = [eager.step(step, images) for step in range(3)]
    compiled_losses = [compiled.step(step, images) for step in range(3)]
    np.testing.assert_allclose(compiled_losses, eager_losses, rtol=1e-5)
    eager_state, compiled_state = eager.state_dict(), compiled.state_dict()
    assert compiled_state["student"].keys() == eager_state["student"].keys()
    assert compiled_state["teacher"].keys() == eager_state["teacher"].keys()
    for name, value in eager_state["teacher"].items():
        torch.testing.assert_close(compiled_state["teacher"][name], value, rtol=1e-4, atol=1e-5, msg=name)

    by_param = harness.get_encoder("dino-test", compile=True)
    assert by_param.training_config()["compile"] is True
    assert by_param.weights_key != harness.get_encoder("dino-test").weights_key
    assert dino_test_trainer(compile=True)[0].compiled and not eager.compiled


def test_one_compiled_block_serves_every_block(setup: dict) -> None:
    """The blocks of the student differ only in their drop-path probability: held in a
    tensor, it does not make the compiler trace each block again, so a network twice as
    deep compiles as many graphs."""
    traced: list[int] = []

    def counting(graph: torch.fx.GraphModule, example_inputs: list) -> Any:
        traced.append(1)
        return graph.forward

    counts = []
    for depth in (2, 4):
        torch._dynamo.reset()
        traced.clear()
        trainer, images = dino_test_trainer(drop_path=0.2, model_kwargs={"depth": depth, "embed_dim": 32, "num_heads": 2})
        trainer.compile(backend=counting)
        for step in range(2):
            assert np.isfinite(trainer.step(step, images))
        counts.append(len(traced))
    assert counts[0] == counts[1] > 0


def test_sample_drop_path_drops_whole_samples_at_its_rate() -> None:
    """`SampleDropPath` is timm's drop path: in training each sample's branch is zero or
    scaled by 1 / (1 - p), kept with probability 1 - p; in evaluation it passes through."""
    from harness_plugins.encoders._dino_model import SampleDropPath

    layer = SampleDropPath(0.3)
    x = torch.rand(20_000, 4, 3) + 0.5
    torch.manual_seed(0)
    y = layer.train()(x)
    kept = (y != 0).all(dim=(1, 2))
    assert torch.equal(kept, (y != 0).any(dim=(1, 2)))  # a sample is dropped whole or kept whole
    torch.testing.assert_close(y[kept], x[kept] * (1 / 0.7), rtol=1e-6, atol=0)
    assert abs(kept.float().mean().item() - 0.7) < 3 * (0.7 * 0.3 / len(x)) ** 0.5
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(SampleDropPath(0.0).train()(x), x)


def test_the_dino_head_draws_its_weights_alike_on_every_torch_release() -> None:
    """The head's hidden weights are N(0, 0.02) drawn after the `nn.Linear` constructors'
    own draws, and its biases are zero: the same numbers whatever the torch release, so
    training starts from the same head on each."""
    from harness_plugins.encoders._dino_model import DINOHead

    shapes = [(24, 16), (24, 24), (8, 24)]
    torch.manual_seed(7)
    head = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8, nlayers=3)
    torch.manual_seed(7)
    for rows, columns in shapes:  # what each constructor draws: weight, then bias
        torch.empty(rows, columns).uniform_()
        torch.empty(rows).uniform_()
    expected = [torch.empty(rows, columns).normal_(0.0, 0.02) for rows, columns in shapes]
    linears = [m for m in head.mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == shapes
    for linear, weight in zip(linears, expected):
        assert torch.equal(linear.weight.detach(), weight)
        assert torch.count_nonzero(linear.bias) == 0


def test_a_step_whose_loss_is_not_finite_names_it(setup: dict) -> None:
    trainer, images = dino_test_trainer()
    trainer.loss_fn.cross_entropy = lambda student, teacher, epoch: student.sum() * float("nan")
    with pytest.raises(HarnessError, match="DINO loss is nan at step 3; lower the learning rate"):
        trainer.step(3, images)


def test_image_folder_data(setup: dict, tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "photos" / "class_a"
    folder.mkdir(parents=True)
    for i, image in enumerate(digits_like(10, 30, seed=1)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    ctx = context(setup, "cache-folder")
    encoder = harness.get_encoder("dino-test", data={"folder": str(tmp_path / "photos")}, steps=2, dataset_size=None, steps_per_epoch=None)
    assert encoder.group == "realistic"
    encoder.prepare(ctx)
    assert encoder.training_info["steps"] == 2 and encoder.training_info["config"]["dataset_size"] == 10


@pytest.mark.slow
def test_ddp_two_cpu_processes(setup: dict) -> None:
    """torchrun with 2 gloo processes: one checkpoint, and the ranks see different images."""
    cache = setup["root"] / "cache-ddp"
    env = {
        **os.environ,
        "HARNESS_CACHE": str(cache),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(setup["root"]), os.environ.get("PYTHONPATH", "")])),
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "harness", "--registry", str(setup["registry"]), "train", "dino-test", "--device", "cpu",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    use_registry(setup["registry"])
    key = harness.get_encoder("dino-test").weights_key
    assert [p.relative_to(cache).as_posix() for p in cache.rglob("checkpoint*")] == [f"weights/{key}/checkpoint.pt"]
    info = json.loads((cache / "weights" / key / "training.json").read_text())
    assert info["world_size"] == 2 and info["finished"] and len(info["loss"]) == 6
    ranks = sorted(info["first_images"], key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["index"] for r in ranks] == [0, 4]  # global batch 8: rank 1 starts at image 4
    assert ranks[0]["sha256"] != ranks[1]["sha256"]


# ---------------------------------------------------------------------------- keys
def _keys(registry_path: Path) -> dict[str, str]:
    registry = load_registry(registry_path)
    return {name: registry.create("encoder", name).key for name in ("sift", "dino-tiny-dead-leaves", "dino-tiny-shaders")}


def test_keys_follow_the_referred_generator(setup: dict, tmp_path: Path) -> None:
    """An encoder's key holds the generator it names whole: redefining `dead-leaves`
    changes the keys of `sift` (its vocabulary) and of a dino encoder trained on it, and
    of nothing else; loading the same registry twice changes nothing."""
    same = tmp_path / "same.yaml"
    same.write_text("generators: {}\n")
    circles = tmp_path / "circles.yaml"
    circles.write_text("generators:\n  dead-leaves: {plugin: dead-leaves, params: {shape: circle}}\n")
    before, again, after = _keys(same), _keys(same), _keys(circles)
    assert before == again
    assert after["sift"] != before["sift"]
    assert after["dino-tiny-dead-leaves"] != before["dino-tiny-dead-leaves"]
    assert after["dino-tiny-shaders"] == before["dino-tiny-shaders"]
    weights = [load_registry(path).create("encoder", "dino-tiny-dead-leaves").weights_key for path in (same, circles)]
    assert weights[0] != weights[1]


def test_pretrained_key_is_the_file_content_not_its_path(setup: dict, tmp_path: Path) -> None:
    _, state = _source_model(setup)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "vit.pth", tmp_path / "b" / "vit.pth"  # torch.save records the file's stem
    torch.save(state, first)
    torch.save(state, second)
    assert _pretrained(first).key == _pretrained(second).key
    torch.save({**state, "cls_token": state["cls_token"] + 1}, second)
    assert _pretrained(first).key != _pretrained(second).key


# ---------------------------------------------------------------------------- pretrained
def _source_model(setup: dict) -> tuple[harness.Encoder, dict[str, torch.Tensor]]:
    use_registry(setup["registry"])
    source = harness.get_encoder("vit-test")
    source.prepare(RunContext(registry=use_registry(setup["registry"]), device="cpu"))
    return source, {k: v.clone() for k, v in source.model.state_dict().items()}


def _pretrained(path: Path, **params: object) -> harness.Encoder:
    return harness.get_encoder(
        "pretrained", arch="vit_tiny_patch16_224", img_size=16, patch_size=8,
        model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2}, checkpoint=str(path), **params,
    )


def test_dino_layout_checkpoint_gives_the_source_features(setup: dict, tmp_path: Path) -> None:
    source, state = _source_model(setup)
    head = {"head.mlp.0.weight": torch.zeros(4, 32), "head.last_layer.weight_g": torch.ones(4, 1)}
    checkpoint = {
        "teacher": {**{f"backbone.{k}": v for k, v in state.items()}, **head},
        "student": {**{f"module.backbone.{k}": torch.zeros_like(v) for k, v in state.items()}, **{f"module.{k}": v for k, v in head.items()}},
        "epoch": 100,
    }
    path = tmp_path / "dino_full.pth"
    torch.save(checkpoint, path)
    images = digits_like()
    expected = source.embed(images)
    loaded = _pretrained(path)
    loaded.prepare()
    torch.testing.assert_close(loaded.embed(images), expected, rtol=0, atol=0)
    assert loaded.group == "target"

    from safetensors.torch import save_file

    flat = tmp_path / "backbone.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(flat))
    from_safetensors = _pretrained(flat, layer=0)
    from_safetensors.prepare()
    source_layer0 = harness.get_encoder("vit-test", layer=0)
    torch.testing.assert_close(from_safetensors.embed(images), source_layer0.embed(images), rtol=0, atol=0)


def test_checkpoint_with_missing_keys_fails_naming_file_and_keys(setup: dict, tmp_path: Path) -> None:
    _, state = _source_model(setup)
    path = tmp_path / "broken.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("blocks.1.mlp")}, path)
    with pytest.raises(HarnessError) as info:
        _pretrained(path).prepare()
    message = str(info.value)
    assert str(path) in message and "missing keys" in message and "blocks.1.mlp.fc1.weight" in message

    mis_shaped = tmp_path / "shape.pth"
    torch.save({**state, "pos_embed": torch.zeros(1, 9, 16)}, mis_shaped)
    with pytest.raises(HarnessError, match=r"mis-shaped keys: pos_embed \(checkpoint \[1, 9, 16\], model \[1, 5, 32\]\)"):
        _pretrained(mis_shaped).prepare()

    extra = tmp_path / "extra.pth"
    torch.save({**state, "fc_extra.weight": torch.zeros(2)}, extra)
    with pytest.raises(HarnessError, match="unexpected keys: fc_extra.weight"):
        _pretrained(extra).prepare()

    with pytest.raises(HarnessError, match="does not exist"):
        _pretrained(tmp_path / "absent.pth").prepare()


def test_pickle_refused_by_weights_only_fails_loudly(setup: dict, tmp_path: Path) -> None:
    import argparse

    _, state = _source_model(setup)
    path = tmp_path / "with_args.pth"
    torch.save({"teacher": state, "args": argparse.Namespace(arch="vit_small")}, path)
    with pytest.raises(HarnessError, match=f"{path.name}.*weights_only"):
        _pretrained(path).prepare()


# ---------------------------------------------------------------------------- precision
def test_precision_is_the_float32_forward_pass_or_the_same_under_bfloat16_autocast() -> None:
    """`precision: float32` (the default, as the released evaluation) is the model's forward
    pass in float32; `bfloat16` is the same pass under torch's bfloat16 autocast (here on
    the CPU), which moves the features and so is in the key; another value is refused."""
    from harness.preprocessing import normalize
    from harness_plugins.encoders.vit import IMAGENET_MEAN, IMAGENET_STD

    exact = harness.get_encoder("random-init-tiny")
    fast = harness.get_encoder("random-init-tiny", precision="bfloat16")
    batch = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model = exact.build_model().eval()
    x = normalize(batch.float() / 255, IMAGENET_MEAN, IMAGENET_STD)  # 32 px images: no resize
    with torch.inference_mode():
        in_float32 = model.forward_features(x)[:, 0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            in_bfloat16 = model.forward_features(x)[:, 0].float()
    assert torch.equal(exact.embed(batch), in_float32) and torch.equal(fast.embed(batch), in_bfloat16)
    assert (in_float32 - in_bfloat16).abs().max() > 1e-3
    assert (exact.precision, fast.precision, harness.get_encoder("rgb").precision) == ("float32", "bfloat16", "float32")
    assert exact.key != fast.key
    with pytest.raises(ParamsError, match="precision"):
        harness.get_encoder("random-init-tiny", precision="float16")


def test_float32_on_a_gpu_turns_tf32_off_for_the_forward_pass_only() -> None:
    """torch lets cuDNN's convolutions (a ViT's patch embedding) run in TF32 by default,
    10 bits of mantissa: float32 forward passes on CUDA turn it off, and back after."""
    from harness.device import forward_precision

    before = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("medium")  # a user's setting: bfloat16 allowed in products
    try:
        with forward_precision("cuda:0", "float32"):  # sets flags only: no GPU needed
            assert not torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "medium"
        with forward_precision("cpu", "float32"):
            assert torch.backends.cudnn.allow_tf32  # nothing to change on the CPU
    finally:
        torch.backends.cudnn.allow_tf32 = before[0]
        torch.set_float32_matmul_precision(before[1])


def test_a_dino_encoder_evaluated_in_bfloat16_keeps_its_weights_key() -> None:
    """The precision of the forward pass is an evaluation option: it changes the encoder's
    key, not the key of the weights its training produces."""
    exact = harness.get_encoder("dino-tiny-shaders-kml-mixup")
    fast = harness.get_encoder("dino-tiny-shaders-kml-mixup", precision="bfloat16")
    assert exact.weights_key == fast.weights_key and exact.key != fast.key


# ---------------------------------------------------------------------------- layer
def test_layer_changes_features_and_minus_one_is_the_default(setup: dict) -> None:
    use_registry(setup["registry"])
    images = digits_like()
    default = harness.get_encoder("vit-test").embed(images)
    last = harness.get_encoder("vit-test", layer=-1).embed(images)
    first = harness.get_encoder("vit-test", layer=0).embed(images)
    torch.testing.assert_close(last, default, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first, default, atol=1e-3)
    patches = harness.get_encoder("vit-test", layer=0).embed_patches(images)
    assert patches.shape == (6, 2, 2, 32)


# ---------------------------------------------------------------------------- white-box
def test_psnr_and_ssim_distances_equal_scikit_image() -> None:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (4, 3, 20, 24), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    b[3] = a[3] // 2
    psnr = harness.get_encoder("psnr", size=None)
    ssim = harness.get_encoder("ssim", size=None)
    d_psnr = psnr.pairwise_distance(torch.from_numpy(a), torch.from_numpy(b))
    d_ssim = ssim.pairwise_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert d_psnr.dtype == np.float64 and d_psnr.shape == (4,)
    expected_psnr = [-peak_signal_noise_ratio(a[i], b[i]) for i in range(4)]
    expected_ssim = [-structural_similarity(a[i], b[i], channel_axis=0) for i in range(4)]
    np.testing.assert_allclose(d_psnr, expected_psnr, rtol=1e-12)
    np.testing.assert_allclose(d_ssim, expected_ssim, rtol=1e-10)
    assert psnr.distance == "psnr" and ssim.distance == "ssim"
    assert d_ssim[3] > d_ssim[0]  # the halved image is further than the noisy one
    # at the default size (224) both inputs are resized first; embed is a flat image
    assert harness.get_encoder("ssim").pairwise_distance(torch.from_numpy(a), torch.from_numpy(a)).tolist() == [-1.0] * 4
    assert psnr.embed(torch.from_numpy(a)).shape == (4, 3 * 16 * 16)


def test_dense_sift_orientation_and_bag_of_words(setup: dict) -> None:
    from harness_plugins.encoders.whitebox import dense_sift

    # a vertical step edge: all gradient energy is horizontal (orientation bin 0)
    gray = torch.zeros(1, 1, 24, 24)
    gray[..., 12:] = 1.0
    desc = dense_sift(gray, bin_size=4, step=4)
    assert desc.shape == (1, 2, 2, 128)
    per_orientation = desc.reshape(-1, 16, 8).sum(dim=(0, 1))
    assert per_orientation[0] > 0 and torch.all(per_orientation[1:] == 0)
    assert torch.allclose(desc.norm(dim=-1), torch.ones(1, 2, 2))

    ctx = context(setup, "cache-sift")
    sift = harness.get_encoder("sift-test")
    sift.prepare(ctx)
    features = sift.embed(digits_like(5, 32))
    assert features.shape == (5, 8) and torch.all(features >= 0)
    torch.testing.assert_close((features**2).sum(dim=1), torch.ones(5))  # sqrt of a histogram
    again = harness.get_encoder("sift-test")
    again.prepare(ctx)  # the vocabulary comes from the cache
    assert torch.equal(again.vocabulary, sift.vocabulary)
    assert sift.embed_patches(digits_like(2, 32)).shape[-1] == 128


# ---------------------------------------------------------------------------- augmentation
def test_multicrop_draws_are_per_global_batch_and_sliced_per_rank() -> None:
    from harness_plugins.encoders._dino_augment import MultiCrop

    crop = MultiCrop(global_size=16, local_size=8, n_local=2, sigma_scale=16 / 224)
    images = digits_like(8, 24)
    params = crop.draw(torch.Generator().manual_seed(5), 8, 24, 24)
    again = crop.draw(torch.Generator().manual_seed(5), 8, 24, 24)
    assert all(torch.equal(p[k], q[k]) for p, q in zip(params, again) for k in p)
    whole = crop.apply(images, params)
    assert [tuple(c.shape) for c in whole] == [(8, 3, 16, 16)] * 2 + [(8, 3, 8, 8)] * 2
    rank1 = crop.apply(images[4:], params, slice(4, 8))
    for full, part in zip(whole, rank1):
        torch.testing.assert_close(part, full[4:])


def test_color_jitter_matches_torchvision() -> None:
    functional = pytest.importorskip("torchvision.transforms.functional")
    from harness_plugins.encoders._dino_augment import color_jitter

    x = torch.rand(4, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    factors = torch.tensor([[0.7, 1.3, 0.9, 0.05], [1.2, 0.8, 1.1, -0.08], [1.0, 1.0, 1.0, 0.1], [0.6, 1.4, 0.8, -0.1]])
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]])
    ops = [functional.adjust_brightness, functional.adjust_contrast, functional.adjust_saturation, functional.adjust_hue]
    expected = []
    for i in range(4):
        y = x[i]
        for op in order[i].tolist():
            y = ops[op](y, float(factors[i, op]))
        expected.append(y)
    ours = color_jitter(x, factors, order, torch.tensor([True, True, True, False]))
    torch.testing.assert_close(ours[:3], torch.stack(expected[:3]), rtol=0, atol=1e-4)
    assert torch.equal(ours[3], x[3])


def test_spawned_data_workers_give_the_batches_of_the_training_process() -> None:
    """A process that holds CUDA spawns its data-loader workers (a forked one could not use
    the GPU). A spawned worker imports the generator classes without registering them:
    the batches must still be those made in the training process, pixel for pixel, here
    for a built-in generator whose base stream is seeded by its plugin name."""
    from harness_plugins.encoders._dino_data import GeneratorSource, StreamPlan, step_batches

    source = GeneratorSource(harness.get_generator("shaders-kml-mixup"), "shaders-kml-mixup", seed=5, size=24)
    plan = StreamPlan(seed=5, global_batch=3, dataset_size=40)
    inline = list(step_batches(source, plan, 0, 3, 0))
    spawned = list(step_batches(source, plan, 0, 3, 2, start_method="spawn"))
    assert [s for s, _, _ in spawned] == [0, 1, 2]
    for (step, images, indices), (_, theirs, their_indices) in zip(inline, spawned):
        assert indices == their_indices == plan.indices(step)
        assert torch.equal(images, theirs), f"step {step}: a spawned worker drew other images"
