"""The runner: the cross product of encoders x tasks x each task's datasets.

Each cell is keyed by everything that determines it (encoder key, task key, dataset
spec). A cell already in results.jsonl (ok or skipped) is not recomputed unless
`force`; a cell that raises is recorded as `error` with its traceback saved under
`<out>/errors/`, and the run goes on. `harness.launch` runs the same cells as cluster
jobs.
"""

from __future__ import annotations

import json
import platform
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cache import atomic_write
from harness.context import CellContext, RunContext, default_device
from harness.errors import DatasetUnavailable, HarnessError, RegistryError, UnknownNameError
from harness.kinds import NAME_PATTERN, Encoder, Task, stable_hash
from harness.registry import Registry
from harness.results import Result, ResultStore, exclusive_run


@dataclass
class Plan:
    profile: str
    encoders: list[str]
    tasks: list[str]
    generators: list[str]


@dataclass
class Cell:
    encoder: Encoder
    task: Task
    dataset: str
    key: str

    @property
    def label(self) -> str:
        return f"{self.encoder.name} / {self.task.name} / {self.dataset}"


def _names(option: list[str] | str | None, known: list[str]) -> list[str] | None:
    """Expand `all` and comma-separated lists; None when the option was not given."""
    if option is None:
        return None
    items = option.split(",") if isinstance(option, str) else [x for part in option for x in part.split(",")]
    items = [x.strip() for x in items if x.strip()]
    return list(known) if items == ["all"] else items


class Runner:
    def __init__(
        self,
        registry: Registry,
        out_dir: Path = Path("leaderboard"),
        device: str | None = None,
        force: bool = False,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.registry = registry
        self.store = ResultStore(out_dir)
        self.force = force
        self.ctx = RunContext(
            registry=registry,
            device=device or default_device(),
            seed=seed,
            out_dir=Path(out_dir),
            progress=progress,
        )

    def select(
        self,
        profile: str | None = None,
        encoders: list[str] | str | None = None,
        tasks: list[str] | str | None = None,
        generators: list[str] | str | None = None,
    ) -> Plan:
        """The profile's selection, with any of encoders/tasks/generators given explicitly."""
        name = profile or "default"
        chosen = self.registry.profile(name) if (profile or not (encoders and tasks)) else None
        picked = {}
        for kind, option in (("encoder", encoders), ("task", tasks), ("generator", generators)):
            names = _names(option, self.registry.instance_names(kind))
            if names is None:
                names = list(getattr(chosen, kind + "s")) if chosen else []
            for item in names:  # fail before any work on a misspelt name
                self.create(kind, item)
            picked[kind] = names
        return Plan(name, picked["encoder"], picked["task"], picked["generator"])

    def create(self, kind: str, name: str) -> Any:
        """`registry.create`, with the registry field at fault named when an instance's plugin
        is not loaded (and the plugins that failed to load), and a task's datasets checked."""
        try:
            plugin = self.registry.create(kind, name)
        except UnknownNameError as exc:
            spec = self.registry.spec(kind, name)
            if spec is None or spec.plugin in self.registry.plugins.classes[kind]:
                raise
            broken = "; ".join(f"{b.source}: {b.error}" for b in self.registry.plugins.broken)
            hint = f" Plugins that failed to load (see `harness list`): {broken}" if broken else ""
            raise RegistryError(f"{self.registry.path}: {kind}s.{name}.plugin: {exc}{hint}") from None
        if kind == "task":
            _check_datasets(self.registry, plugin)
        return plugin

    def cell_key(self, encoder: Encoder, task: Task, dataset: str) -> str:
        spec = self.registry.config.datasets.get(dataset)
        return stable_hash([encoder.key, task.key, dataset, spec.model_dump() if spec else None])

    def cells(self, plan: Plan) -> list[Cell]:
        encoders = [self.create("encoder", name) for name in plan.encoders]
        tasks = [self.create("task", name) for name in plan.tasks]
        return [Cell(e, t, d, self.cell_key(e, t, d)) for e in encoders for t in tasks for d in t.datasets]

    def pending(self, plan: Plan) -> tuple[list[Cell], int]:
        """Cells still to compute, and how many are already in results.jsonl."""
        cells = self.cells(plan)
        done = set() if self.force else self.store.done_cells()
        todo = [c for c in cells if c.key not in done]
        return todo, len(cells) - len(todo)

    def run(self, plan: Plan) -> list[Result]:
        from tqdm import tqdm

        with exclusive_run(self.store.out_dir):
            todo, reused = self.pending(plan)
            produced: list[Result] = []
            prepared: dict[str, BaseException | None] = {}
            bar = tqdm(todo, desc="cells", unit="cell", disable=not self.ctx.progress)
            for cell in bar:
                bar.set_postfix_str(cell.label)
                records = run_cell(self.ctx, cell, prepared)
                self.store.append(records)
                produced.extend(records)
            self.finish(plan, produced, reused)
        return produced

    def finish(self, plan: Plan, produced: list[Result], reused: int) -> None:
        """Generator grids, the leaderboard and the summary table."""
        from harness.leaderboard import render_leaderboard, write_generator_grids

        write_generator_grids(self.registry, plan.generators, self.store.out_dir, self.ctx.seed)
        render_leaderboard(self.store.out_dir, registry=self.registry)
        if self.ctx.progress:
            print(summary_table(produced, reused))


def _check_datasets(registry: Registry, task: Task) -> None:
    """A task's `datasets` must be a list of dataset names (a bare string or a number in
    registry.yaml would otherwise be iterated, or crash the run with a TypeError)."""
    raw = task.params.get("datasets")
    try:
        names = None if isinstance(raw, (str, bytes)) else task.datasets
    except TypeError:
        names = None
    if names is None or not all(isinstance(n, str) and re.match(NAME_PATTERN, n) for n in names):
        shown = raw if "datasets" in task.params else names
        raise RegistryError(
            f"{registry.path}: tasks.{task.name}.params.datasets: must be a list of dataset names "
            f"(e.g. [digits]), got {shown!r}"
        )


TRAINING = "training"  # <out>/training/<encoder>.json: how each trained encoder was trained


def write_training_summary(out_dir: Path, encoder: Encoder) -> None:
    """Keep a trained encoder's training summary beside the results, for the leaderboard."""
    summary = encoder.training_summary()
    if summary is None:
        return
    path = Path(out_dir) / TRAINING / f"{encoder.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, default=str)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def run_cell(ctx: RunContext, cell: Cell, prepared: dict[str, BaseException | None] | None = None) -> list[Result]:
    """Compute one cell; every outcome (ok, skipped, error) becomes records.

    `prepared` remembers which encoders were prepared in this process (and how that
    failed), so an encoder is trained or loaded once per run.
    """
    prepared = {} if prepared is None else prepared
    encoder, task = cell.encoder, cell.task
    cell_ctx = CellContext(run=ctx, task=task, encoder=encoder, dataset=cell.dataset, cell_key=cell.key)
    try:
        if task.needs_patches and not encoder.supports_patches:
            raise DatasetUnavailable(f"encoder {encoder.name!r} has no patch features; task {task.name!r} needs them")
        if encoder.name not in prepared:
            try:
                encoder.prepare(ctx)
                prepared[encoder.name] = None
            except Exception as exc:
                prepared[encoder.name] = exc
                raise
            write_training_summary(ctx.out_dir, encoder)
        elif prepared[encoder.name] is not None:
            raise prepared[encoder.name]  # type: ignore[misc]
        records = task.run(encoder, cell_ctx)
        if not records:
            raise HarnessError(f"task {task.name!r} returned no results for {encoder.name!r} on {cell.dataset!r}")
        if not isinstance(records, (list, tuple)) or not all(isinstance(r, Result) for r in records):
            raise TypeError(  # a bug in the plugin, not bad input
                f"task plugin {task.plugin_name!r} returned {records!r:.100}; "
                "Task.run must return a list of records made with ctx.result(...)"
            )
        return list(records)
    except DatasetUnavailable as exc:
        record = cell_ctx.result("skipped", None)
        record.status, record.message = "skipped", str(exc)
        return [record]
    except Exception as exc:
        trace_path = ctx.out_dir / "errors" / f"{task.name}__{cell.dataset}__{encoder.name}.txt"
        trace_path.parent.mkdir(parents=True, exist_ok=True)
        trace_path.write_text(traceback.format_exc())
        record = cell_ctx.result("error", None)
        record.status = "error"
        record.error_kind = "input" if isinstance(exc, HarnessError) else "internal"
        record.message = f"{type(exc).__name__}: {exc} (traceback: {trace_path.relative_to(ctx.out_dir)})"
        return [record]


def exit_status(produced: list[Result]) -> int:
    """0 when every cell finished, 2 when a cell failed on bad input, 1 for other errors."""
    errors = [r for r in produced if r.status == "error"]
    if any(r.error_kind == "input" for r in errors):
        return 2
    return 1 if errors else 0


def summary_table(produced: list[Result], reused: int) -> str:
    from tabulate import tabulate

    rows = [
        (r.encoder, r.task, r.dataset, r.metric, "" if r.value is None else f"{r.value:.4g}", r.status, f"{r.seconds:.1f}")
        for r in produced
        if r.headline or r.status != "ok"
    ]
    counts = {s: sum(r.status == s for r in produced) for s in ("ok", "skipped", "error")}
    table = tabulate(rows, headers=["encoder", "task", "dataset", "metric", "value", "status", "s"])
    return (
        f"{table}\n\n{len({r.cell_key for r in produced})} cells computed, {reused} reused from results.jsonl; "
        f"records: {counts['ok']} ok, {counts['skipped']} skipped, {counts['error']} error "
        f"({platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')})"
    )
