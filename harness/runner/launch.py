"""Running the cross product as Slurm jobs through submitit (what DINO's own scripts use).

Each encoder's training is one job on one node with `train_gpus` GPUs (one task per
GPU; submitit exports the torch.distributed environment, so `prepare` sets up DDP as
under torchrun). Each evaluation cell is one job that depends on its encoder's
training. A cell job writes its records to `<out>/cells/<cell key>.jsonl` (atomically);
the submitting process merges finished cell files into results.jsonl under its lock,
so two jobs never write the same file. Running `harness run --launcher slurm` again
merges what finished, waits for the jobs still queued or running (never submitting a
cell twice), and resubmits the cells whose jobs ended without a result (cancelled, failed,
node failure); finished cells are never resubmitted.

Job states come from `squeue`, which asks the controller directly: it answers on clusters
without accounting, where `sacct` (what submitit polls) fails and every job looks UNKNOWN.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cache import atomic_write
from harness.config.schema import EncoderSpec, SlurmSpec
from harness.config.registry import load_registry, use_registry
from harness.errors import HarnessError
from harness.results.store import Result, exclusive_run
from harness.runner.cells import Cell, Plan, Runner, run_cell

# Slurm job states in which a job may still produce its result; every other state is final.
ALIVE_STATES = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING",
    "STAGE_OUT", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
}


@dataclass
class JobSpec:
    """What one submitted job needs to rebuild its world in a fresh process."""

    registry_path: str
    out_dir: str
    seed: int
    encoder: str
    limit: int | float | None = None
    task: str | None = None
    dataset: str | None = None
    encoder_entry: dict[str, Any] | None = None
    """The encoder's registry entry, for one derived at run time (a layer of a sweep, a
    generator of a comparison), which the registry file does not hold."""


def _runner(spec: JobSpec) -> Runner:
    registry = use_registry(load_registry(spec.registry_path))
    if spec.encoder_entry is not None:
        registry.add_instance("encoder", spec.encoder, EncoderSpec.model_validate(spec.encoder_entry))
    return Runner(registry, out_dir=Path(spec.out_dir), seed=spec.seed, progress=False, limit=spec.limit)


def train_job(spec: JobSpec) -> str:
    """Prepare (train) one encoder; under Slurm with several tasks, as DDP ranks."""
    import os

    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    runner = _runner(spec)
    encoder = runner.registry.create("encoder", spec.encoder)
    encoder.prepare(runner.ctx)
    return encoder.key


def cell_job(spec: JobSpec) -> str:
    """Compute one cell and write its records to its own file."""
    runner = _runner(spec)
    encoder = runner.registry.create("encoder", spec.encoder)
    task = runner.registry.create("task", spec.task)
    cell = Cell(encoder, task, spec.dataset, runner.cell_key(encoder, task, spec.dataset))
    records = run_cell(runner.ctx, cell)
    write_cell_file(Path(spec.out_dir), cell.key, records)
    return cell.key


def write_cell_file(out_dir: Path, key: str, records: list[Result]) -> Path:
    payload = "".join(r.model_dump_json() + "\n" for r in records)
    return atomic_write(out_dir / "cells" / f"{key}.jsonl", lambda tmp: tmp.write_text(payload))


def merge_cell_files(runner: Runner) -> int:
    """Move finished cell files into results.jsonl (once each); returns how many."""
    cells_dir = runner.store.out_dir / "cells"
    merged = 0
    for path in sorted(cells_dir.glob("*.jsonl")) if cells_dir.exists() else []:
        if path.stem not in runner.store.done_cells():  # also guards a crash between append and unlink
            records = [Result.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]
            runner.store.append(records)
            merged += 1
        path.unlink()
    return merged


def slurm_job_states(job_ids: list[str]) -> dict[str, str] | None:
    """The state of each job the Slurm controller still knows; a job it has forgotten
    (ended more than MinJobAge ago) is absent. None when squeue cannot answer."""
    if not job_ids:
        return {}
    command = ["squeue", "--noheader", "--states=all", "--format=%i|%T", f"--jobs={','.join(job_ids)}"]
    try:
        answer = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if answer.returncode != 0:
        return {} if "Invalid job id" in answer.stderr else None  # every id forgotten
    return dict(line.strip().split("|", 1) for line in answer.stdout.splitlines() if "|" in line)


class SlurmLauncher:
    """Submits training and cell jobs; `cluster="local"` runs them as local processes (tests)."""

    def __init__(self, runner: Runner, slurm: SlurmSpec, cluster: str | None = None, poll_s: float = 5.0) -> None:
        self.runner = runner
        self.slurm = slurm
        self.cluster = cluster
        self.poll_s = poll_s
        self.folder = runner.store.out_dir / "jobs"
        self.state_path = self.folder / "submitted.json"

    def _executor(self, gpus: int, minutes: int, name: str, dependency: str | None = None) -> Any:
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
        params: dict[str, Any] = {"timeout_min": minutes, "name": name, "tasks_per_node": max(1, gpus), "nodes": 1}
        if executor.cluster == "slurm":
            params.update(
                slurm_partition=self.slurm.partition,
                gpus_per_node=gpus,
                cpus_per_task=self.slurm.cpus_per_gpu,
                slurm_mem=f"{self.slurm.mem_gb}G",
                slurm_setup=self.slurm.setup,
            )
            if self.slurm.account:
                params["slurm_account"] = self.slurm.account
            if dependency:
                # a failed training cancels its cells instead of leaving them pending forever
                params["slurm_additional_parameters"] = {"dependency": dependency, "kill_on_invalid_dep": "yes"}
        else:
            params["tasks_per_node"] = 1
        executor.update_parameters(**params)
        return executor

    def _load_state(self) -> dict[str, str]:
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def _save_state(self, state: dict[str, str]) -> None:
        atomic_write(self.state_path, lambda tmp: tmp.write_text(json.dumps(state, indent=1)))

    @property
    def _on_slurm(self) -> bool:
        return self.cluster in (None, "slurm")

    def _live_jobs(self, job_ids: list[str]) -> set[str]:
        """The jobs among `job_ids` that are still queued or running."""
        states = slurm_job_states(job_ids)
        if states is None:
            raise HarnessError(
                f"cannot ask Slurm about the jobs in {self.state_path} (squeue failed); "
                "run again where squeue reaches the controller"
            )
        return {job_id for job_id, state in states.items() if state.split()[0] in ALIVE_STATES}

    def run(self, plan: Plan) -> list[Result]:
        import submitit

        runner = self.runner
        with exclusive_run(runner.store.out_dir):
            merge_cell_files(runner)
            todo, reused = runner.pending(plan)
            state = self._load_state()
            # local jobs die with the process that submitted them; Slurm jobs outlive it
            live = self._live_jobs([state[c.key] for c in todo if c.key in state]) if self._on_slurm else set()
            jobs = [submitit.SlurmJob(self.folder / "%j", job_id) for job_id in sorted(live)]
            base = dict(registry_path=str(runner.registry.path.resolve()), out_dir=str(runner.store.out_dir.resolve()), seed=runner.ctx.seed, limit=runner.ctx.limit)
            by_encoder: dict[str, list[Cell]] = {}
            for cell in todo:
                by_encoder.setdefault(cell.encoder.name, []).append(cell)
            for encoder_name, cells in by_encoder.items():
                waiting = [c for c in cells if state.get(c.key) not in live]
                if not waiting:
                    continue
                encoder = cells[0].encoder
                entry = runner.registry.spec("encoder", encoder_name)
                job_spec = dict(base, encoder=encoder_name, encoder_entry=None if entry is None else entry.model_dump())
                dependency = None
                if encoder.trainable:
                    train = self._executor(self.slurm.train_gpus, self.slurm.train_time_min, f"train-{encoder_name}")
                    train_job_handle = train.submit(train_job, JobSpec(**job_spec))
                    jobs.append(train_job_handle)
                    if train.cluster == "slurm":
                        dependency = f"afterok:{train_job_handle.job_id}"
                    else:
                        train_job_handle.result()  # the local executor has no dependencies: wait
                for cell in waiting:
                    executor = self._executor(self.slurm.eval_gpus, self.slurm.eval_time_min, f"eval-{cell.task.name}", dependency)
                    job = executor.submit(cell_job, JobSpec(**job_spec, task=cell.task.name, dataset=cell.dataset))
                    state[cell.key] = str(job.job_id)
                    jobs.append(job)
                self._save_state(state)
            self._wait(jobs)
            merge_cell_files(runner)
            keys = {c.key for c in todo}
            produced = [r for r in runner.store.read() if r.cell_key in keys]
            runner.finish(plan, produced, reused)
        return produced

    def _wait(self, jobs: list[Any]) -> None:
        """Wait until every job has ended, merging cell files as they land."""
        running = list(jobs)
        while running:
            merge_cell_files(self.runner)
            states = slurm_job_states([job.job_id for job in running]) if self._on_slurm else {}
            still_running = []
            for job in running:
                if self._has_ended(job, states):
                    self._report(job, (states or {}).get(job.job_id, "ended"))
                else:
                    still_running.append(job)
            running = still_running
            if running:
                time.sleep(self.poll_s)

    def _has_ended(self, job: Any, states: dict[str, str] | None) -> bool:
        if not self._on_slurm:
            return job.done()
        if states is None:  # squeue did not answer this time: ask again at the next poll
            return False
        return states.get(job.job_id, "gone").split()[0] not in ALIVE_STATES

    @staticmethod
    def _report(job: Any, final_state: str) -> None:
        """Say why an ended job left no usable result, if it did (the next run resubmits its cell)."""
        if not all(job.task(i).paths.result_pickle.exists() for i in range(job.num_tasks)):
            print(f"job {job.job_id} ended ({final_state}) without a result; run again to resubmit its cell")
            return
        try:
            job.results()
        except Exception as exc:
            print(f"job {job.job_id} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
