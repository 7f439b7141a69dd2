"""A profile that compares generators (`compare_generators`, the `ranking` profile): one
encoder derived per generator and seed, a user's generator joining with `--generators`,
the budget multiplier `--scale` and its price in the dry run, and the ranking rendered
from the records alone."""

from __future__ import annotations

import json

import pytest
import scipy.stats

from harness.config.registry import load_registry, use_registry
from harness.errors import HarnessError, RegistryError
from harness.results.leaderboard import render_leaderboard
from harness.results.store import Result, ResultStore
from harness.runner.cells import Runner
from harness.runner.dryrun import describe_plan
from helpers import cli

BUILT_IN = ["dead-leaves", "shaders", "shaders-mixup", "shaders-kml", "shaders-kml-mixup", "stylegan-oriented"]


@pytest.fixture
def user_registry(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text("generators:\n  mine: {plugin: dead-leaves, params: {shape: circle}}\n")
    return path


def test_ranking_trains_every_generator_with_three_seeds(tmp_path) -> None:
    registry = load_registry()
    plan = Runner(registry, out_dir=tmp_path, progress=False).select("ranking")
    assert plan.generators == BUILT_IN
    trained = [name for name in plan.encoders if name.startswith("dino-tiny-")]
    assert trained == [f"dino-tiny-{g}{suffix}" for g in BUILT_IN for suffix in ("", "-seed1", "-seed2")]
    assert [name for name in plan.encoders if name not in trained] == ["random-init-tiny", "random-init-tiny-seed1", "random-init-tiny-seed2"]
    # the derived entries are the written ones where those exist (same names, same contents)
    assert registry.spec("encoder", "dino-tiny-shaders").params == {"data": "shaders", "recipe": "tiny"}
    assert registry.spec("encoder", "dino-tiny-shaders-seed2").params == {"data": "shaders", "recipe": "tiny", "seed": 2}
    keys = {registry.create("encoder", name).key for name in trained}
    assert len(keys) == 18  # every generator and seed is its own training


def test_a_user_generator_joins_the_comparison(tmp_path, user_registry) -> None:
    registry = load_registry(user_registry)
    plan = Runner(registry, out_dir=tmp_path, progress=False).select("ranking", generators="mine")
    assert plan.generators == BUILT_IN + ["mine"]
    assert plan.encoders[-3:] == ["dino-tiny-mine", "dino-tiny-mine-seed1", "dino-tiny-mine-seed2"]
    encoder = registry.create("encoder", "dino-tiny-mine-seed1")
    assert encoder.training_config()["seed"] == 1 and encoder.resolve(encoder.params.data).params.shape == "circle"
    with pytest.raises(HarnessError, match="minee"):
        Runner(load_registry(user_registry), out_dir=tmp_path, progress=False).select("ranking", generators="minee")


def test_scale_multiplies_steps_and_images_and_names_the_encoders(tmp_path) -> None:
    registry = load_registry()
    plan = Runner(registry, out_dir=tmp_path, progress=False).select("ranking", scale=4)
    base, scaled = registry.create("encoder", "dino-tiny-shaders"), registry.create("encoder", "dino-tiny-shaders-x4")
    assert "dino-tiny-shaders-seed1-x4" in plan.encoders and "dino-tiny-shaders" not in plan.encoders
    assert scaled.params.dataset_size == 4 * base.training_config()["dataset_size"]
    assert scaled.training_cost().images == 4 * base.training_cost().images  # 4x the steps at the same batch
    assert scaled.training_config()["epochs"] == base.training_config()["epochs"]
    half = Runner(load_registry(), out_dir=tmp_path, progress=False).select("ranking", scale=0.5)
    assert "dino-tiny-shaders-x0_5" in half.encoders


def test_scale_is_refused_where_nothing_is_compared(tmp_path) -> None:
    with pytest.raises(HarnessError, match="profile 'default' compares no generators"):
        Runner(load_registry(), out_dir=tmp_path, progress=False).select("default", scale=2)
    result = cli("run", "--profile", "ranking", "--scale", "0", "--dry-run", "--out", str(tmp_path))
    assert result.returncode == 2 and "--scale" in result.stderr and "> 0" in result.stderr


def test_a_derived_name_taken_by_another_entry_is_refused(tmp_path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text("encoders:\n  dino-tiny-shaders-seed1: {plugin: dino, params: {data: shaders, recipe: tiny, seed: 7}}\n")
    with pytest.raises(RegistryError, match="dino-tiny-shaders-seed1: the name is taken"):
        Runner(load_registry(path), out_dir=tmp_path, progress=False).select("ranking")


def test_dry_run_prices_the_scaled_training(tmp_path) -> None:
    images = {}
    for scale, name in ((1, "dino-tiny-shaders-kml"), (4, "dino-tiny-shaders-kml-x4")):
        runner = Runner(load_registry(), out_dir=tmp_path / "out", progress=False)
        text = describe_plan(runner, runner.select("ranking", scale=scale), "local", train_images_per_s=100, embed_images_per_s=1000)
        row = next(line for line in text.splitlines() if line.startswith(f"train {name} "))
        images[scale], hours = int(row.split()[3]), float(row.split()[-1])
        assert hours == pytest.approx(images[scale] / 100 / 3600, abs=0.005)  # one local process: no GPUs to divide by
        assert "expected hours here:" in text
    assert images[4] == 4 * images[1] == 4 * 5 * (4096 // 64) * 64  # the tiny recipe: 5 epochs of 4096 images


def test_the_ranking_reads_derived_encoders_from_their_records(tmp_path) -> None:
    """A later leaderboard, written with a registry that no longer derives the encoders
    (another profile, no `--generators mine`), still ranks them as recorded."""
    store = ResultStore(tmp_path / "out")
    recorded = {
        "dino-tiny-mine": ("dino", {"data": "mine", "recipe": "tiny"}, 70.0),
        "dino-tiny-mine-seed1": ("dino", {"data": "mine", "recipe": "tiny", "seed": 1}, 68.0),
        "dino-tiny-shaders": ("dino", {"data": "shaders", "recipe": "tiny"}, 60.0),
        "random-init-tiny": ("random-init", {"arch": "vit_tiny_patch16_224"}, 40.0),
        "random-init": ("random-init", {"arch": "vit_tiny_patch16_224", "patch_size": 4}, 90.0),  # another architecture
    }
    for encoder, (plugin, params, value) in recorded.items():
        architecture = "vit 32px/4" if encoder == "random-init" else "vit 32px/8"
        store.append([Result(task="knn-x", dataset="digits", encoder=encoder, metric="top1", value=value, n=540,
                             headline=True, task_plugin="knn", cell_key=encoder,
                             encoder_spec={"plugin": plugin, "params": params, "architecture": architecture})])
    board = render_leaderboard(tmp_path / "out", registry=use_registry(load_registry())).read_text()
    section = board[board.index("### knn:"):]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()[4:7]]
    half = scipy.stats.t.ppf(0.975, 1) * 1.0  # t * sd(70, 68) / sqrt(2), and sd(70, 68) = sqrt(2)
    assert [(row[1], row[2], row[3]) for row in rows] == [
        ("mine", "2", f"69.00 ± {half:.2f}"), ("shaders", "1", "60.00"), ("(random init.)", "1", "40.00")]
    assert [row[0] for row in rows] == ["1", "2", "3"]  # one seed has no interval, so it ties with nothing
    assert "dino-tiny-mine (mean of 2 seeds)" in board


def test_a_ranking_run_end_to_end_as_cluster_jobs(tmp_path) -> None:
    """Two generators x two seeds of a two-step recipe, against random init, through the
    command line as cluster jobs (submitit's in-process executor): a job rebuilds its
    registry from the file, which does not hold the derived encoders, so it carries their
    entries and the run's --limit. Every encoder trains once, and the leaderboard ranks
    the generators."""
    path = tmp_path / "registry.yaml"
    path.write_text(
        "profiles:\n"
        "  mini:\n"
        "    encoders: [random-init-tiny]\n"
        "    tasks: [knn-digits]\n"
        "    generators: [shaders]\n"
        "    compare_generators:\n"
        "      plugin: dino\n"
        "      params: {recipe: tiny, steps: 2, dataset_size: 64, train_batch_size: 32, source_size: 32}\n"
        "      name: 'mini-{generator}'\n"
        "      seeds: [0, 1]\n"
    )
    out = tmp_path / "out"
    env = {"HARNESS_CACHE": str(tmp_path / "cache")}
    result = cli("--registry", str(path), "run", "--profile", "mini", "--generators", "shaders-mixup", "--limit", "200",
                 "--launcher", "slurm", "--cluster", "debug", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    headline = {r["encoder"] for r in records if r["headline"] and r["status"] == "ok" and r["n"] == 200}
    assert headline == {"random-init-tiny", "mini-shaders", "mini-shaders-seed1", "mini-shaders-mixup", "mini-shaders-mixup-seed1"}
    assert {r["encoder_spec"]["params"].get("seed", 0) for r in records if r["encoder"].startswith("mini-")} == {0, 1}
    board = (out / "LEADERBOARD.md").read_text()
    section = board[board.index("## Generator ranking"):]
    assert "| shaders " in section and "| shaders-mixup " in section and "(random init.)" in section
    trained = (out / "training").glob("*.json")
    assert len(list(trained)) == 4



def test_harness_list_shows_what_a_profile_trains_per_generator(capsys) -> None:
    from harness.cli import main

    assert main(["list", "ranking"]) == 0
    shown = capsys.readouterr().out
    assert "+ dino-tiny-{generator} for each of ['dead-leaves'," in shown and "seeds [0, 1, 2]" in shown
