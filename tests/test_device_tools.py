"""The GPU measurement tools: `tools/device/run --rehearse` does every step of a GPU run on
this CPU (so the script cannot rot between GPU runs), `harness bench --merge` adds a GPU
run's stages to the report, and the targets are judged by their floor and aim."""

from __future__ import annotations

import base64
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from harness.bench.endtoend import agrees, compare, failures
from harness.bench.targets import target_rows, where_time_goes
from harness.config.schema import TargetSpec
from helpers import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_rehearsal_runs_every_stage_of_the_gpu_run_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools/device/run"), "--rehearse", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    log = (out / "run.log").read_text()
    assert "OpenGL renderer:" in log and "stages without rows" not in log
    for stage in ("generators", "embed", "train", "memory", "profile", "end-to-end"):
        assert f"{stage}: up to " in log and re.search(rf"^{stage}: [0-9]+ rows", log, re.M) and f"{stage}: done in " in log
    assert "| compute shaders: True" in log  # the generators' context: Mesa's llvmpipe has OpenGL 4.5
    assert re.search(r"GL probe, 64 x 64 px, 16 iterations per pixel: fragment [0-9.]+ Mpx/s, compute [0-9.]+ Mpx/s", log), log[-3000:]
    assert ("graphics twice gives the same bytes for 16 of 16 images, compute twice for 16; "
            "compute gives the drawn bytes for 16 of 16 images (16 within 1); 0 of 49152 bytes differ, by at most 0; "
            "programs more than 1 apart: none") in log, log[-3000:]
    assert "GL-CUDA interop: no CUDA device here; 16 of 16 images as read back through the host" in log, log[-3000:]
    assert "copies from the GPU to the host: no CUDA device here" in log
    assert "shaders-kml-mixup on the GPU against numpy on the CPU: no CUDA device here" in log
    assert re.search(r"shaders-kml-mixup, 16 images of 32 px, 2-means on cpu: [0-9]+ images/s as generated .* [0-9]+ with HARNESS_GL=host", log)
    state = json.loads((out / "performance.json").read_text())
    rows = {stage: state[stage]["rows"] for stage in ("generators", "embed", "train", "memory", "profile", "end-to-end")}

    generators = {row["generator"]: row for row in rows["generators"]}
    assert set(generators) == {"shaders", "rehearsal-kml-mixup"}
    for row in generators.values():
        assert "error" not in row, row
        assert abs(row["ratio_to_reference"] - row["images_per_s"] / row["reference_images_per_s"]) < 0.01
    assert generators["shaders"]["reference_pipeline"] == "decode pre-rendered JPEGs"
    assert "CPU KML" in generators["rehearsal-kml-mixup"]["reference_pipeline"]

    (embed,) = rows["embed"]  # the trainable encoder is timed by the train stage only
    assert embed["encoder"] == "rehearsal-vit" and embed["module_images_per_s"] > 0 and embed["gflops_per_image"] > 0
    assert embed["precision"] == "bfloat16"  # the module alone computes as `embed` does

    (train,) = rows["train"]
    assert "error" not in train, train
    assert train["crops"] == "2x32 + 8x16" and train["recipe"] == "paper"
    assert train["images_per_s"] > 0 and train["one_step_descends"] is True, train
    assert train["data_workers"] == 1  # rehearsal.yaml streams its data through one worker, as a GPU run does
    assert 0 < train["machine_cpu_busy"] <= 1 and train["process_cpu_per_s"] > 0, train
    turns = 1 / (1 / train["model_alone_images_per_s"] + 1 / train["data_alone_images_per_s"])
    assert train["data_alone_images_per_s"] > 0 and abs(train["taking_turns_images_per_s"] - turns) <= 0.1, train
    assert train["prerendered_format"] == "jpeg" and not train["prerendered_under_compile"], train  # the rehearsal compiles nothing
    assert all(isinstance(train[figure], float) and train[figure] > 0 for figure in ("prerender_images_per_s", "prerendered_images_per_s", "prerendered_data_alone_images_per_s")), train
    assert train["reference_processes"] == generators["shaders"]["reference_processes"] == len(os.sched_getaffinity(0))

    assert all(row["identical_on_sample"] for row in rows["memory"])

    works = {row["work"].split(" ")[0] for row in rows["profile"]}
    assert works == {"train", "generate", "classify", "audit"}
    busy = next(row for row in rows["profile"] if row["work"].startswith("train"))
    assert busy["operator"].startswith("(all operators") and 0 < busy["share"] <= 1.01
    assert busy["wall_ms"] > 0 and busy["profiled_wall_ms"] > 0 and abs(busy["share"] - busy["self_ms"] / busy["wall_ms"]) < 0.002
    parts = {row["operator"]: row["share"] for row in rows["profile"] if row["work"].endswith("rehearsal-kml-mixup (parts)")}
    assert {"base images", "combine them", "base images > wait for the GL work"} <= set(parts)
    assert parts["base images"] + parts["combine them"] <= 1.0
    assert sum(share for part, share in parts.items() if part.startswith("base images > ")) <= parts["base images"] + 0.002

    # the acceptance profile's encoders that need no training, on this CPU, equal the committed leaderboard
    comparison = {row["encoder"]: row for row in rows["end-to-end"]}
    assert set(comparison) == {"random-init-tiny", "random-init-tiny-seed1", "random-init-tiny-seed2"}
    for row in comparison.values():
        assert row["compared"] > 0 and row["agree"] == row["compared"] and row["max_abs_difference"] == 0, row
        assert row["outside"] == "", row

    report = (out / "PERFORMANCE.md").read_text()
    for heading in ("## generators", "## embed", "## train", "## memory", "## profile", "## end-to-end"):
        assert heading in report


def test_a_rerun_skips_the_checks_and_adds_its_stages_to_the_first_run(tmp_path: Path) -> None:
    """A rerun of some stages on the same machine leaves out the checks the first run
    printed, still says whether GL renders, and adds its stages' rows to the first run's
    performance.json: the first run's other stages stay, a stage both ran holds the
    rerun's rows."""
    first = tmp_path / "first.json"
    first.write_text(json.dumps({
        "embed (GPU)": {"rows": [{"encoder": "kept", "images_per_s": 1.0}], "machine": "m", "date": "d"},
        "memory": {"rows": [{"rows": 1, "replaced": True}], "machine": "m", "date": "d"},
    }))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools/device/run"), "--rehearse", "--stages", "memory", "--skip-checks",
         "--keep", str(first), "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    log = (out / "run.log").read_text()
    assert "OpenGL renderer:" in log and "checks are skipped (--skip-checks)" in log
    assert "GL probe, 64 x 64 px" not in log and "pipelines, 16 shader images" not in log and "GL-CUDA interop:" not in log
    state = json.loads((out / "performance.json").read_text())
    assert state["embed (GPU)"]["rows"] == [{"encoder": "kept", "images_per_s": 1.0}]
    assert state["memory"]["rows"] and all(row["identical_on_sample"] for row in state["memory"]["rows"])
    assert state["memory"]["date"] != "d"


def test_targets_are_judged_against_floor_and_aim_in_either_direction() -> None:
    rate = TargetSpec(label="rate", stage="embed", where={"encoder": "a"}, column="images_per_s", floor=100, aim=400)
    time = TargetSpec(label="time", stage="memory", where={"memory": 10}, column="classify_s", floor=5, aim=1)
    absent = TargetSpec(label="absent", stage="train", column="images_per_s", floor=1, aim=2)
    state = {
        "embed (GPU)": {"rows": [{"encoder": "b", "images_per_s": 1e9}, {"encoder": "a", "images_per_s": 200.0}],
                        "machine": "x86_64 Linux, 16 cores; NVIDIA H100 80GB HBM3, driver 1, CUDA 13.0; Python", "date": "d"},
        "memory (GPU)": {"rows": [{"memory": 10, "classify_s": 0.5}], "accelerator": "NVIDIA H200", "machine": "", "date": "d"},
        "embed": {"rows": [{"encoder": "a", "images_per_s": 1.0}], "machine": "cpu", "date": "d"},
    }
    rows = {row["target"]: row for row in target_rows([rate, time, absent], state, " (GPU)")}
    assert rows["rate"]["measured"] == 200.0 and rows["rate"]["verdict"] == "floor met, aim not"
    assert rows["rate"]["fraction_of_aim"] == 0.5 and rows["rate"]["measured_on"] == "NVIDIA H100 80GB HBM3"
    assert rows["time"]["verdict"] == "aim met" and rows["time"]["fraction_of_aim"] == 2.0
    assert rows["time"]["measured_on"] == "NVIDIA H200"
    assert rows["absent"]["verdict"] == "not measured"
    slow = target_rows([time], {"memory (GPU)": {"rows": [{"memory": 10, "classify_s": 6.0}], "machine": "", "date": ""}}, " (GPU)")
    assert slow[0]["verdict"] == "floor not met"


def test_each_target_says_what_limits_it() -> None:
    """Beside a figure: its share of the bf16 limit its row gives, and the largest shares
    of the time of the same work in the profile stage (the device's busy share first;
    for a generator, the parts it counts and then its torch operators); for training on
    pre-rendered files, the share of the model's rate alone (compiled where the files
    were read under torch.compile) and the files' rate alone."""
    eager = TargetSpec(label="eager", stage="train", where={"encoder": "dino"}, column="images_per_s", floor=1000, aim=3000)
    files = TargetSpec(label="files", stage="train", where={"encoder": "dino"}, column="prerendered_images_per_s", floor=1000, aim=3000)
    compiled = TargetSpec(label="compiled", stage="train", where={"encoder": "dino"}, column="compiled_images_per_s", floor=1000, aim=3000)
    drawn = TargetSpec(label="drawn", stage="generators", where={"generator": "kml", "size": 224}, column="images_per_s", floor=3000, aim=5000)
    classify = TargetSpec(label="classify", stage="memory", where={"memory": 10}, column="classify_s", floor=5, aim=1)
    audit = TargetSpec(label="audit", stage="memory", where={"memory": 10}, column="audit_s", floor=10, aim=2)
    profile = [
        {"work": "train dino (operators)", "operator": "(all operators: share = busy fraction)", "share": 0.94, "wall_ms": 934.0},
        *({"work": "train dino (operators)", "operator": name, "share": share}
          for name, share in [("aten::mm", 0.10), ("aten::copy_", 0.13), ("aten::add", 0.05), ("aten::cat", 0.11)]),
        {"work": "generate 1024 x 224 px kml (parts)", "operator": "base images", "share": 0.75},
        {"work": "generate 1024 x 224 px kml (parts)", "operator": "combine them", "share": 0.24},
        {"work": "generate 1024 x 224 px kml (operators)", "operator": "(all operators: share = busy fraction)", "share": 0.3,
         "wall_ms": 800.0},
        *({"work": "generate 1024 x 224 px kml (operators)", "operator": name, "share": share}
          for name, share in [("aten::bmm", 0.4), ("aten::index", 0.2), ("aten::sub", 0.1), ("aten::mul", 0.05)]),
        {"work": "generate 1024 x 224 px kml (functions)", "operator": "wait_for", "share": 0.9},
        {"work": "generate 1024 x 224 px kml-compute (parts)", "operator": "read back", "share": 0.9},
        {"work": "generate 1024 x 64 px kml (parts)", "operator": "read back", "share": 0.9},
        {"work": "classify 5000 queries, memory 10 (functions)", "operator": "pair_similarities", "share": 0.42},
        {"work": "audit 5000 queries, memory 10 (functions)", "operator": "predictions_after_removal", "share": 0.3},
    ]
    state = {
        "train (GPU)": {"rows": [{"encoder": "dino", "images_per_s": 600.0, "compiled_images_per_s": 1200.0,
                                  "bf16_limit_images_per_s": 8000.0, "data_workers": 8, "data_images_per_s": 60000.0,
                                  "model_alone_images_per_s": 1200.0, "compiled_model_images_per_s": 1500.0,
                                  "data_alone_images_per_s": 1300.0, "taking_turns_images_per_s": 624.0,
                                  "compiled_taking_turns_images_per_s": 696.4, "prerendered_images_per_s": 1350.0,
                                  "prerendered_under_compile": True, "prerendered_data_alone_images_per_s": 9100.0, "prerendered_data_workers": 8,
                                  "prerender_images_per_s": 1210.0}],
                        "machine": "", "date": "d"},
        "generators (GPU)": {"rows": [{"generator": "kml", "size": 224, "images_per_s": 1300.0}], "machine": "", "date": "d"},
        "memory (GPU)": {"rows": [{"memory": 10, "classify_s": 4.0, "audit_s": 5.0}], "machine": "", "date": "d"},
        "profile (GPU)": {"rows": profile, "machine": "", "date": "d"},
    }
    rows = {row["target"]: row for row in target_rows([eager, compiled, files, drawn, classify, audit], state, " (GPU)")}
    assert rows["eager"]["fraction_of_bf16_limit"] == 0.075 and rows["compiled"]["fraction_of_bf16_limit"] == 0.15
    assert rows["eager"]["where_time_goes"] == (
        "beside 8 data workers: 50% of the model alone's rate, waiting for data 1%; "  # 600 / 1200, 600 / 60000
        "taking turns with the data (alone 1,300/s) on one device: 624/s; "
        "train dino (operators): busy 94%; aten::copy_ 13%, aten::cat 11%, aten::mm 10%"
    )
    measured_before = [{**profile[0], "share": 0.47}, *(row for row in profile[1:] if row["work"].startswith("train"))]
    del measured_before[0]["wall_ms"]  # taken over the profiled wall time, which the profiler lengthens
    assert where_time_goes(measured_before) == "busy 47% of the profiled wall time; aten::copy_ 13%, aten::cat 11%, aten::mm 10%"
    assert rows["compiled"]["where_time_goes"] == (  # the profile times eager steps
        "beside 8 data workers: 80% of the model alone's rate; taking turns with the data (alone 1,300/s) on one device: 696/s"
    )
    assert rows["files"]["where_time_goes"] == (  # 1350 / 1500; no profile of compiled steps
        "beside 8 data workers: 90% of the model alone's rate (compiled); the files read alone: 9,100/s (written at 1,210/s)"
    )
    eager_files = target_rows([files], {"train (GPU)": {"rows": [{**state["train (GPU)"]["rows"][0], "prerendered_under_compile": False}]}}, " (GPU)")
    assert eager_files[0]["where_time_goes"].startswith("beside 8 data workers: 112% of the model alone's rate;")  # 1350 / 1200
    assert rows["drawn"]["where_time_goes"] == (  # the parts, then the torch operators of the same call
        "generate 1024 x 224 px kml (parts): base images 75%, combine them 24%; "
        "generate 1024 x 224 px kml (operators): busy 30%; aten::bmm 40%, aten::index 20%, aten::sub 10%"
    )
    assert rows["drawn"]["fraction_of_bf16_limit"] == rows["classify"]["fraction_of_bf16_limit"] == ""
    assert rows["classify"]["where_time_goes"] == "classify 5000 queries, memory 10 (functions): pair_similarities 42%"
    assert rows["audit"]["where_time_goes"] == "audit 5000 queries, memory 10 (functions): predictions_after_removal 30%"


def test_end_to_end_tolerance_and_failed_cells(tmp_path: Path) -> None:
    assert agrees(10.0, 11.0) and not agrees(10.0, 11.01)  # one unit of the metric
    assert agrees(1000.0, 1019.0) and not agrees(1000.0, 1021.0)  # 2 % of a large value
    key = ("knn", "digits", "enc", "top1", "{}")
    ours = {key: 50.0, ("knn", "digits", "enc", "top5", "{}"): 90.0}
    committed = {key: 52.5, ("knn", "digits", "enc", "top5", "{}"): 90.0}
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join(json.dumps(r) for r in [
        {"task": "knn", "dataset": "digits", "encoder": "enc", "metric": "top1", "value": 50.0, "status": "ok"},
        {"task": "linear", "dataset": "digits", "encoder": "enc", "metric": "top1", "value": None, "status": "error", "message": "boom"},
        {"task": "knn", "dataset": "digits", "encoder": "trained", "metric": "top1", "value": None, "status": "error", "message": "no GPU"},
    ]) + "\n")
    failed = failures(results)
    assert failed == {"enc": ["linear/digits: error: boom"], "trained": ["knn/digits: error: no GPU"]}
    rows = {row["encoder"]: row for row in compare(ours, committed, trained={"trained"}, failed=failed)}
    assert rows["enc"]["compared"] == 2 and rows["enc"]["agree"] == 1 and rows["enc"]["max_abs_difference"] == 2.5
    assert rows["enc"]["disagreeing_metrics"] == "top1 x1"
    assert rows["enc"]["outside"] == rows["enc"]["largest_at"] == "knn/digits top1 {}: 50 vs 52.5"
    assert rows["enc"]["not_ok_cells"] == 1 and rows["enc"]["held_to_tolerance"]
    assert rows["trained"]["compared"] == 0 and rows["trained"]["note"] == "knn/digits: error: no GPU"


def test_end_to_end_names_the_values_outside_the_tolerance_largest_difference_first() -> None:
    from harness.bench.endtoend import OUTSIDE_LISTED

    count = 2 * OUTSIDE_LISTED + 2  # odd k lie k + 2 apart (outside), even k 0.5 apart (inside)
    committed = {("knn", "digits", "enc", "top1", f'{{"k": {k}}}'): 50.0 for k in range(count)}
    ours = {key: 50.0 + (2.0 + k if k % 2 else 0.5) for k, key in enumerate(committed)}
    (row,) = compare(ours, committed, trained=set())
    assert row["agree"] == OUTSIDE_LISTED + 1 and row["disagreeing_metrics"] == f"top1 x{OUTSIDE_LISTED + 1}"
    largest_first = sorted(range(1, count, 2), reverse=True)[:OUTSIDE_LISTED]
    assert row["outside"].split("; ") == [f'knn/digits top1 {{"k": {k}}}: {52 + k:g} vs 50' for k in largest_first] + ["and 1 more"]


def test_merge_adds_a_gpu_run_to_the_report_and_checks_the_targets(tmp_path: Path) -> None:
    report = tmp_path / "PERFORMANCE.md"
    (tmp_path / "performance.json").write_text(json.dumps({"embed": {"rows": [{"encoder": "x"}], "machine": "cpu", "date": "d"}}))
    gpu = tmp_path / "gpu.json"
    memory = {"memory": 1280000, "classify_s": 4.0, "audit_s": 12.0}
    # embedding ViT-S/16 in bf16, measured before the instance that asks for bf16 had its own name
    embed = {"encoder": "random-init-vit-s16", "arch": "vit_small_patch16_224 224px/16", "precision": "bfloat16", "images_per_s": 13000.0}
    gpu.write_text(json.dumps({
        "memory (GPU)": {"rows": [memory], "machine": "m", "accelerator": "NVIDIA H100", "date": "2026-01-02"},
        "embed (GPU)": {"rows": [embed], "machine": "m", "accelerator": "NVIDIA H100", "date": "2026-01-01"},
    }))
    result = cli("bench", "--merge", str(gpu), "--profile", "device", "--report", str(report), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads((tmp_path / "performance.json").read_text())
    assert set(state) == {"embed", "memory (GPU)", "embed (GPU)", "targets (GPU)"}
    verdicts = {row["target"]: row["verdict"] for row in state["targets (GPU)"]["rows"]}
    assert verdicts["memory 1.28M x 384, 50k queries: classify (s)"] == "floor met, aim not"
    assert verdicts["memory 1.28M x 384, 50k queries: audit (s)"] == "floor not met"
    assert verdicts["embedding ViT-S/16, 224 px, bf16, end to end (images/s)"] == "floor met, aim not"
    assert state["targets (GPU)"]["date"] == "2026-01-02"  # its latest measurement, not the day of the merge
    assert verdicts["DINO ViT-S/16 paper recipe, model alone (images/s)"] == "not measured"
    text = report.read_text()
    assert text.index("## targets (GPU)") < text.index("## embed")

    gpu.write_text("[1, 2]")
    result = cli("bench", "--merge", str(gpu), "--report", str(report), cwd=tmp_path)
    assert result.returncode == 2 and "gpu.json is not a performance.json" in result.stderr


def test_prepare_refuses_a_folder_git_would_commit() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools/device/prepare"), "--folder", "tools"], capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "tools is not ignored by git" in done.stderr


def script(name: str) -> ModuleType:
    """One of the tools in tools/device, scripts without a .py suffix, as a module."""
    loader = importlib.machinery.SourceFileLoader(f"device_{name}", str(ROOT / "tools/device" / name))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def test_the_working_tree_leaves_room_for_what_prepare_packs() -> None:
    """The GPU machine receives the working tree with the carried folders, 64 MiB in all:
    a tree grown past what the folders leave free would be found only when packing for a
    GPU run, which then says by how much and what to leave out."""
    prepare = script("prepare")
    tree_mib = prepare.size_of(prepare.working_tree()) / 2**20
    assert tree_mib + prepare.PACKED_MIB <= prepare.TRANSFER_LIMIT_MIB, (
        f"the working tree holds {tree_mib:.2f} MiB, more than the {prepare.TRANSFER_LIMIT_MIB - prepare.PACKED_MIB} MiB "
        "that the carried folders leave free")
    over = prepare.over_transfer_limit((prepare.TRANSFER_LIMIT_MIB + 1.5) * 2**20, no_mesa=False)
    assert "exceed 64 MiB by 1.50 MiB: run again with --no-mesa" in over
    assert "--no-mesa" not in prepare.over_transfer_limit((prepare.TRANSFER_LIMIT_MIB + 1.5) * 2**20, no_mesa=True)


def test_the_carry_list_prepare_prints_is_the_one_the_documentation_gives() -> None:
    prepare = script("prepare")
    carried = json.dumps([".device-carry", prepare.MESA_FOLDER])
    assert f"carry {carried}" in (ROOT / "docs/device.md").read_text()
    assert "--no-mesa" in (ROOT / "docs/device.md").read_text()


def test_every_stage_keeps_its_floor_while_the_stages_before_it_run() -> None:
    run = script("run")
    later = ["memory", "profile", "end-to-end"]
    promised = sum(run.STAGE_FLOOR_S[name] for name in later)
    assert run.stage_timeout("train", later, 10_000) == run.STAGE_CAP_S["train"]
    assert run.stage_timeout("train", later, promised + 100) == 100
    assert run.stage_timeout("train", later, promised + 10) == run.STAGE_FLOOR_S["train"]
    assert run.stage_timeout("memory", [], 30) == 30  # never more than is left
    # a budget that covers every floor: each stage, taking all it is given, leaves the
    # later ones at least their floors
    left = sum(run.STAGE_FLOOR_S.values()) + 50
    for position, stage in enumerate(run.STAGES):
        given = run.stage_timeout(stage, run.STAGES[position + 1:], left)
        assert given >= run.STAGE_FLOOR_S[stage], stage
        left -= given
    assert left >= 0


def test_a_stage_ends_once_its_rows_are_saved_or_when_its_time_is_up(tmp_path: Path) -> None:
    """A stage's process is ended soon after it prints its summary line (its rows are
    saved by then), however long it would take to exit; one that overruns is stopped."""
    run = script("run")
    log = run.Log(tmp_path / "run.log")
    lingers = "print('embed: 3 rows', flush=True); import time; time.sleep(300)"
    assert run.run_stage([sys.executable, "-c", lingers], "embed", log, dict(os.environ), timeout=120) == 0
    overruns = "print('embed: at 0 s', flush=True); import time; time.sleep(300)"
    assert run.run_stage([sys.executable, "-c", overruns], "embed", log, dict(os.environ), timeout=3) == 124
    fails = "import sys; print('train: error', flush=True); sys.exit(3)"
    assert run.run_stage([sys.executable, "-c", fails], "train", log, dict(os.environ), timeout=120) == 3
    text = (tmp_path / "run.log").read_text()
    assert "embed: 3 rows\n  (its rows saved at " in text and "not waiting for the process to exit" in text
    assert "embed: at 0 s\n  (stopped after 3 s)" in text and "train: error" in text


def fake_wheel(folder: Path, requires: tuple[str, ...] = ()) -> Path:
    """A minimal wheel of one module and one executable file, deflated as pip's are."""
    metadata = "Metadata-Version: 2.1\nName: tiny-package\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        "tiny_package/__init__.py": b"ANSWER = 42\n",
        "tiny_package/run.sh": b"#!/bin/sh\necho hi\n",
        "tiny_package-1.0.dist-info/METADATA": metadata.encode(),
        "tiny_package-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()
    ) + "tiny_package-1.0.dist-info/RECORD,,\n"
    files["tiny_package-1.0.dist-info/RECORD"] = record.encode()
    wheel = folder / "tiny_package-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=(2024, 1, 2, 3, 4, 6))
            entry.external_attr = (stat.S_IFREG | (0o755 if name.endswith(".sh") else 0o644)) << 16
            archive.writestr(entry, data, compress_type=zipfile.ZIP_DEFLATED)
    return wheel


def test_the_carried_wheels_and_the_image_meet_every_requirement_that_applies_on_the_gpu_machine(tmp_path: Path) -> None:
    """Wheels are installed there without their dependencies: `prepare` checks that the
    project's requirements and those of each carried wheel are met by a carried wheel (at
    a version the requirement admits) or by the image, under that machine's markers."""
    prepare = script("prepare")
    pins = dict(pin.split("==") for pin in prepare.WHEELS)
    assert prepare.unmet({"pyproject.toml": prepare.project_requirements()}, pins, "3.12") == []
    assert prepare.unmet({"pyproject.toml": ["rich>=13"]}, pins, "3.12") == [
        "pyproject.toml needs rich>=13, which is neither carried nor on the image: add it to WHEELS"]

    requires = ("pydantic-core==2.46.5", "annotated_types>=0.6", "email-validator>=2; extra == 'email'",
                "tzdata; platform_system == 'Windows'", "typing-extensions>=4; python_version < '3.9'", "numpy>=1.25")
    wheel = fake_wheel(tmp_path, requires)
    assert prepare.wheel_requirements(wheel) == list(requires)
    carried = {"pydantic_core": "2.46.4", "annotated-types": "0.7.0"}
    assert prepare.unmet({wheel.name: prepare.wheel_requirements(wheel)}, carried, "3.12") == [
        f"{wheel.name} needs pydantic-core==2.46.5, and pydantic-core 2.46.4 is carried: change its pin in WHEELS"]
    assert prepare.unmet({wheel.name: prepare.wheel_requirements(wheel)}, carried, "3.8")[1:] == [
        f"{wheel.name} needs typing-extensions>=4; python_version < '3.9', which is neither carried nor on the image: "
        "add it to WHEELS"]


def test_wheels_travel_uncompressed_in_one_xz_archive_and_install_from_it(tmp_path: Path) -> None:
    """`prepare` rewrites each wheel without compression and packs them in one xz tar;
    `run` unpacks it there and installs them and the project with pip, no index."""
    prepare, run = script("prepare"), script("run")
    wheel = fake_wheel(tmp_path)
    stored = tmp_path / "stored" / wheel.name
    stored.parent.mkdir()
    prepare.stored_wheel(wheel, stored)
    with zipfile.ZipFile(wheel) as before, zipfile.ZipFile(stored) as after:
        assert [e.filename for e in before.infolist()] == [e.filename for e in after.infolist()]
        for old, new in zip(before.infolist(), after.infolist()):
            assert before.read(old) == after.read(new) and new.compress_type == zipfile.ZIP_STORED
            assert (old.date_time, old.external_attr) == (new.date_time, new.external_attr)
    same = tmp_path / "same-bytes"  # a hard link: stored once, unpacked as the same bytes
    os.link(stored, same)
    carry = tmp_path / "carry"
    carry.mkdir()
    prepare.write_xz_tar(carry / run.WHEEL_ARCHIVE, {stored.name: stored, "same-bytes": same})
    with tarfile.open(carry / run.WHEEL_ARCHIVE, "r:xz") as tar:
        assert sorted(member.islnk() for member in tar.getmembers()) == [False, True]

    log, site = run.Log(tmp_path / "run.log"), tmp_path / "scratch" / "site"
    assert run.install(carry, site, log, dict(os.environ))
    assert (site.parent / "wheels" / "same-bytes").read_bytes() == stored.read_bytes()
    assert (site / "tiny_package/__init__.py").read_text() == "ANSWER = 42\n"
    assert os.access(site / "tiny_package/run.sh", os.X_OK)
    assert (site / "harness" / "__init__.py").exists()  # the project itself
    assert "--no-index --no-deps" in (tmp_path / "run.log").read_text()

    assert not run.install(tmp_path / "nothing", site, log, dict(os.environ))
    assert "error: no " + str(tmp_path / "nothing" / run.WHEEL_ARCHIVE) in (tmp_path / "run.log").read_text()


def test_mesa_is_unpacked_into_a_folder_of_its_own_and_named_to_the_generators_stage(tmp_path: Path) -> None:
    prepare, run = script("prepare"), script("run")
    vendor = tmp_path / "50_mesa.json"
    vendor.write_text('{"ICD": {"library_path": "libEGL_mesa.so.0"}}')
    (tmp_path / "mesa").mkdir()
    prepare.write_xz_tar(tmp_path / "mesa" / run.MESA_ARCHIVE, {prepare.MESA_DATA[0]: vendor})
    env: dict[str, str] = {}
    log = run.Log(tmp_path / "run.log")
    run.unpack_mesa(tmp_path / "elsewhere", tmp_path / "prefix", log, env)
    assert env == {} and "the generators are timed on the GPU only" in (tmp_path / "run.log").read_text()
    run.unpack_mesa(tmp_path / "mesa", tmp_path / "prefix", log, env)
    assert env == {"HARNESS_MESA_ROOT": str(tmp_path / "prefix")}
    assert (tmp_path / "prefix" / prepare.MESA_DATA[0]).read_text() == vendor.read_text()


SYSTEM_MESA = Path("/usr/share/glvnd/egl_vendor.d/50_mesa.json")


@pytest.mark.skipif(not SYSTEM_MESA.exists(), reason="no Mesa EGL on this machine")
def test_cpu_renderer_comes_from_the_folder_mesa_was_unpacked_into(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU machine has no Mesa of its own: `tools/device/run` unpacks the carried packages
    into a folder and names it in HARNESS_MESA_ROOT. The generators stage's CPU child then
    loads Mesa's EGL library and llvmpipe from there, not from the system."""
    from harness.bench.generators import cpu_gl_environment

    monkeypatch.setenv("HARNESS_MESA_ROOT", str(tmp_path / "nothing-here"))
    assert "nothing-here/usr/share/glvnd/egl_vendor.d/50_mesa.json absent" in cpu_gl_environment()

    system_lib = Path("/usr/lib/x86_64-linux-gnu")
    lib = tmp_path / "usr/lib/x86_64-linux-gnu"
    (lib / "dri").mkdir(parents=True)
    (tmp_path / "usr/share/glvnd/egl_vendor.d").mkdir(parents=True)
    (tmp_path / "usr/share/glvnd/egl_vendor.d/50_mesa.json").write_bytes(SYSTEM_MESA.read_bytes())
    (lib / "libEGL_mesa.so.0").write_bytes((system_lib / "libEGL_mesa.so.0").read_bytes())
    (lib / "dri/swrast_dri.so").write_bytes((system_lib / "dri/swrast_dri.so").read_bytes())
    monkeypatch.setenv("HARNESS_MESA_ROOT", str(tmp_path))
    env = cpu_gl_environment()
    assert isinstance(env, dict) and env["CUDA_VISIBLE_DEVICES"] == ""
    probe = (
        "import moderngl\n"
        "ctx = moderngl.create_standalone_context(backend='egl', require=330)\n"
        "print(ctx.info['GL_RENDERER'])\n"
        "print('\\n'.join(sorted({line.split()[-1] for line in open('/proc/self/maps') if '/usr/lib/' in line})))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    renderer, *mapped = done.stdout.splitlines()
    assert "llvmpipe" in renderer
    assert {str(lib / "libEGL_mesa.so.0"), str(lib / "dri/swrast_dri.so")} <= set(mapped)
    assert str(system_lib / "libEGL_mesa.so.0") not in mapped


@pytest.mark.skipif(not SYSTEM_MESA.exists() or not shutil.which("readelf") or not shutil.which("ldd"),
                    reason="no Mesa EGL, readelf or ldd on this machine")
def test_the_mesa_archive_holds_every_library_llvmpipe_loads_but_the_system_ones() -> None:
    """`prepare` packs Mesa from its unpacked Debian packages; this machine's Mesa, under
    /, is laid out the same way. What it picks is checked against binutils and the
    dynamic loader: each library's NEEDED entries as readelf reads them, and the whole
    closure as ldd resolves it."""
    prepare = script("prepare")
    libraries = Path("/") / prepare.MESA_LIBRARIES
    for name in prepare.MESA_ENTRY_POINTS:
        dynamic = subprocess.run(["readelf", "-d", str(libraries / name)], capture_output=True, text=True).stdout
        assert prepare.needed_libraries(libraries / name) == re.findall(r"\(NEEDED\).*\[(.*)\]", dynamic)
    members = prepare.mesa_members(Path("/"))
    packed = {Path(name).name for name in members if name.startswith(prepare.MESA_LIBRARIES)}
    resolved = set()
    for name in prepare.MESA_ENTRY_POINTS:
        listing = subprocess.run(["ldd", str(libraries / name)], capture_output=True, text=True).stdout
        resolved |= {line.split()[0] for line in listing.splitlines() if "=>" in line}
    assert resolved - prepare.SYSTEM_LIBRARIES <= packed
    entry_points = {Path(name).name for name in prepare.MESA_ENTRY_POINTS}
    assert entry_points <= packed
    assert packed - entry_points - resolved <= {alias.name for alias in (libraries / "dri").iterdir()}
    assert "usr/share/glvnd/egl_vendor.d/50_mesa.json" in members


@pytest.mark.skipif(not SYSTEM_MESA.exists(), reason="no Mesa EGL on this machine")
def test_one_child_with_the_gpu_hidden_times_every_generator_of_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU machine the generators stage times each generator on the CPU too, in one
    child process kept for the stage (its imports and compiled programs serve them all);
    a generator that fails there says why and the child goes on."""
    from harness.bench.generators import HiddenGpuTimer

    monkeypatch.delenv("HARNESS_MESA_ROOT", raising=False)
    timer = HiddenGpuTimer()
    try:
        assert timer.start() is None  # started before the first request, which it then serves
        child = timer.child.pid
        rate, how = timer.rate("shaders", 16)
        assert rate is not None and rate > 0 and how == "this machine's CPU, GPU hidden"
        assert timer.child.pid == child
        missing, why = timer.rate("no-such-generator", 16)
        assert missing is None and why.startswith("failed: UnknownNameError") and "no-such-generator" in why
        again, _ = timer.rate("shaders", 16)
        assert again is not None and again > 0 and timer.child.pid == child
    finally:
        timer.close()
    assert timer.child is None
