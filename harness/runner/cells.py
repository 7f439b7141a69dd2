"""The runner: the cross product of encoders x tasks x each task's datasets.

Each cell is keyed by everything that determines it (encoder key, task key, dataset
spec). A cell already in results.jsonl (ok or skipped) is not recomputed unless
`force`; a cell that raises is recorded as `error` with its traceback saved under
`<out>/errors/`, and the run goes on. A cell that results.jsonl holds only in part (a
write cut short) is named and computed again. A write to the output directory that fails
(full disk, no permission) stops the run with a message naming the path; finished cells
are kept. `harness.runner.launch` runs the same cells as cluster jobs.
"""

from __future__ import annotations

import platform
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.device import default_device
from harness.runner.compare import compared_encoders
from harness.runner.context import CellContext, RunContext
from harness.errors import DatasetUnavailable, HarnessError, RegistryError, UnknownNameError
from harness.keys import NAME_PATTERN, stable_hash
from harness.kinds import Encoder, Task
from harness.config.registry import Registry
from harness.config.schema import EncoderSpec, InstanceSpec
from harness.results.store import Result, ResultStore, exclusive_run, latest, output_errors, write_training_summary


@dataclass
class Plan:
    """What a run computes. Encoders and tasks are registry instance names or objects
    made in Python (`harness.get_encoder(...)`, a user's `Encoder` subclass, a
    `ModuleEncoder`); generators are names."""

    profile: str | None  # the profile the selection starts from; None: encoders and tasks given without one
    encoders: list[str | Encoder]
    tasks: list[str | Task]
    generators: list[str]


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, which `harness run` raises as one) during `Runner.run`, carrying
    the records computed and reused by then (every computed cell is already in
    results.jsonl). `cells_done`: it came after the last cell, while the manifest and
    leaderboard were being written."""

    def __init__(self, produced: list[Result], reused: list[Result], cells_done: bool = False) -> None:
        super().__init__()
        self.produced, self.reused, self.cells_done = produced, reused, cells_done


@dataclass
class Cell:
    encoder: Encoder
    task: Task
    dataset: str
    key: str

    @property
    def label(self) -> str:
        return f"{self.encoder.name} / {self.task.name} / {self.dataset}"


def _names(option: list[Any] | str | None, known: list[str]) -> list[Any] | None:
    """Expand `all` and comma-separated lists (objects in a list are kept as they are);
    None when the option was not given."""
    if option is None:
        return None
    items: list[Any] = []
    for part in [option] if isinstance(option, str) else option:
        items.extend([x.strip() for x in part.split(",") if x.strip()] if isinstance(part, str) else [part])
    return list(known) if items == ["all"] else items


def with_variants(registry: Registry, kind: str, items: list[Any], instances: dict[str, Any]) -> list[Any]:
    """`items` with each name whose instance stands for variants (`Plugin.variants`, e.g. a
    layer sweep) replaced by one derived name per variant, `<name>.<suffix>`, added to
    `registry` with the entry's parameters and the variant's overrides. Objects made in
    Python are kept as they are."""
    out: list[Any] = []
    for item in items:
        variants = instances[item].variants() if isinstance(item, str) else {}
        if not variants:
            out.append(item)
            continue
        spec = registry.spec(kind, item) or (EncoderSpec if kind == "encoder" else InstanceSpec)(plugin=item)
        for suffix, overrides in variants.items():
            derived = spec.model_copy(update={"params": {**spec.params, **overrides}})
            out.append(registry.add_instance(kind, f"{item}.{suffix}", derived))
    return out


def check_device(device: str) -> None:
    """A HarnessError that says why and what to do unless this process can compute on
    `device`: a device named but missing would otherwise fail every cell of a run, one by
    one, with torch's message."""
    import torch

    from harness.device import cuda_usable

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise HarnessError(f"device {device!r}: not a device torch knows; use cpu, cuda or cuda:N") from None
    kind = parsed.type
    if kind == "cuda":
        count = torch.cuda.device_count() if cuda_usable() else 0
        if count == 0:
            raise HarnessError(
                f"device {device!r}: torch sees no CUDA GPU here (torch {torch.__version__}, CUDA {torch.version.cuda or 'not built in'}); "
                "name none to compute on the CPU"
            )
        if parsed.index is not None and parsed.index >= count:
            raise HarnessError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif kind != "cpu":
        backend = getattr(torch, kind, None) or getattr(torch.backends, kind, None)
        if not (hasattr(backend, "is_available") and backend.is_available()):
            raise HarnessError(f"device {device!r}: torch has no usable {kind} device here; use cpu or cuda")


class Runner:
    def __init__(
        self,
        registry: Registry,
        out_dir: Path = Path("leaderboard"),
        device: str | None = None,
        force: bool = False,
        seed: int = 0,
        progress: bool = True,
        threads: int | None = None,
        limit: int | float | None = None,
    ) -> None:
        self.registry = registry
        self.threads = threads
        self.store = ResultStore(out_dir)
        self.force = force
        self.ctx = RunContext(
            registry=registry,
            device=device or default_device(),
            seed=seed,
            limit=limit,
            out_dir=Path(out_dir),
            progress=progress,
            force=force,
        )

    def select(
        self,
        profile: str | None = None,
        encoders: list[str | Encoder] | str | None = None,
        tasks: list[str | Task] | str | None = None,
        generators: list[str] | str | None = None,
        scale: float = 1.0,
    ) -> Plan:
        """The profile's selection, with any of encoders/tasks/generators given explicitly
        (encoders and tasks as names or objects). A profile that compares generators adds
        the given generators to its own and one trained encoder per generator and seed,
        with `scale` times the training budget."""
        name = profile or "default"
        chosen = self.registry.profile(name) if (profile or not (encoders and tasks)) else None
        picked = {}
        for kind, option in (("encoder", encoders), ("task", tasks), ("generator", generators)):
            names = _names(option, self.registry.instance_names(kind))
            if names is None:
                names = list(getattr(chosen, kind + "s")) if chosen else []
            made = [self.instance(kind, item) for item in names]  # fail before any work on a misspelt name
            by_name = {item: obj for item, obj in zip(names, made) if isinstance(item, str)}
            if any(not isinstance(item, str) for item in names):
                names = self._check_objects(kind, names, made)
            picked[kind] = with_variants(self.registry, kind, names, by_name)
        if chosen is not None and chosen.compare_generators is not None:
            picked["generator"] = list(dict.fromkeys(chosen.generators + picked["generator"]))
            compared = compared_encoders(self.registry, name, picked["generator"], scale)
            picked["encoder"] += [encoder for encoder in compared if encoder not in picked["encoder"]]
        elif scale != 1.0:
            raise HarnessError(f"profile {name!r} compares no generators (no compare_generators entry), so --scale does not apply to it")
        for kind, given in (("encoder", encoders), ("task", tasks)):
            if not picked[kind]:  # no cell to run: say so, rather than finish having done nothing
                source = f"{kind}s {given!r}" if given is not None else f"profile {name!r}"
                raise HarnessError(f"{source} selects no {kind}, so there is nothing to run; name at least one {kind} (--{kind}s)")
        return Plan(name if chosen is not None else None, picked["encoder"], picked["task"], picked["generator"])

    def instance(self, kind: str, item: Any) -> Any:
        """The object a plan entry stands for: made by the registry from a name, or the
        object itself (encoders and tasks made in Python)."""
        if isinstance(item, str):
            return self.registry.create(kind, item)
        wanted = {"encoder": Encoder, "task": Task}.get(kind)
        if wanted is None or not isinstance(item, wanted):
            what = f"an instance name or a harness.{wanted.__name__}" if wanted else "an instance name"
            raise HarnessError(f"{kind}s: expected {what}, got {type(item).__name__} {item!r:.80}")
        if not isinstance(item.name, str) or not re.match(NAME_PATTERN, item.name):
            raise HarnessError(f"{kind} name {item.name!r}: use letters, digits, '.', '_', '+', '-' (set obj.name)")
        return item

    def _check_objects(self, kind: str, items: list[Any], made: list[Any]) -> list[Any]:
        """`items` with repeats of a name left out. Records are filed under an object's
        name: refuse one that names a registry instance, or another entry of the plan,
        with different contents (other parameters, other weights), which the leaderboard
        would show as one row."""
        keys: dict[str, str] = {}
        kept = []
        for item, obj in zip(items, made):
            key = obj.key
            if obj.name not in keys:
                kept.append(item)
            if not isinstance(item, str) and obj.name in self.registry.instance_names(kind) and obj.name not in keys:
                keys[obj.name] = self.registry.create(kind, obj.name).key
            if keys.setdefault(obj.name, key) != key:
                raise HarnessError(
                    f"{kind} {obj.name!r}: two different {kind}s of this name (a registry instance or another entry "
                    f"differs in parameters or weights); give the one made in Python its own name (obj.name = '...')"
                )
        return kept

    def cell_key(self, encoder: Encoder, task: Task, dataset: str) -> str:
        """What determines a cell's records: its encoder's and task's keys, its dataset,
        any --limit, and the names the records are filed under, so that a copy of an
        entry under another name (or a model evaluated under a new name) gets records of
        its own; embeddings, keyed by the encoder's key alone, are shared."""
        subset = [] if self.ctx.limit is None else [{"limit": self.ctx.limit, "seed": self.ctx.seed}]
        names = {"encoder": encoder.name, "task": task.name}
        return stable_hash([encoder.key, task.key, dataset, self.ctx.dataset_description(dataset), *subset, names])

    def cells(self, plan: Plan) -> list[Cell]:
        """Every (encoder, task, dataset) of the plan, in its order, except that encoders
        that train come after those that do not: a long training (days for the paper's
        recipe on a CPU) then holds back none of the cells that need none."""
        encoders = sorted((self.instance("encoder", item) for item in plan.encoders), key=lambda e: e.trainable)
        tasks = [self.instance("task", item) for item in plan.tasks]
        for task in tasks:
            self.check_datasets(task)
        return [Cell(e, t, d, self.cell_key(e, t, d)) for e in encoders for t in tasks for d in t.datasets]

    def check_datasets(self, task: Task) -> None:
        """Refuse, before any work, a dataset that a task's `datasets` parameter names but
        the registry lacks. A task's own `default_datasets`, and every name a task that
        `builds_own_data` is given, may be data the task makes itself."""
        known = self.registry.config.datasets
        for dataset in [] if task.builds_own_data else task.datasets:
            if dataset not in known and dataset not in task.default_datasets:
                raise RegistryError(f"{self.registry.path}: tasks.{task.name}.params.datasets: {UnknownNameError('dataset', dataset, sorted(known))}")

    def pending(self, plan: Plan) -> tuple[list[Cell], list[Result]]:
        """Cells still to compute, and the records of the plan's cells that results.jsonl
        already holds (reused, unless `force`)."""
        cells = self.cells(plan)
        if self.force:
            return cells, []
        keys = {c.key for c in cells}
        contents = self.store.scan()
        for damage in contents.damaged:
            print(f"warning: {damage}", file=sys.stderr)
        newest = {r.cell_key: r.status for r in contents.records if r.cell_key in keys}  # the file is in the order cells ended
        reused = [r for r in contents.records if r.cell_key in keys and newest[r.cell_key] != "error" and r.status != "error"]
        done = {r.cell_key for r in reused}
        return [c for c in cells if c.key not in done], latest(reused)

    def run(self, plan: Plan) -> list[Result]:
        check_device(self.ctx.device)
        with exclusive_run(self.store.out_dir):
            try:
                produced, reused = self.compute(plan)
            except RunInterrupted as stop:  # what finished is saved: say so in a manifest and the leaderboard
                self.finish(plan, stop.produced, stop.reused, interrupted=True)
                raise
            try:
                self.finish(plan, produced, reused)
            except KeyboardInterrupt as stop:
                raise RunInterrupted(produced, reused, cells_done=True) from stop
        return produced

    def compute(self, plan: Plan) -> tuple[list[Result], list[Result]]:
        """The plan's cells not yet in the results file, each appended to it as it ends;
        the records computed and those reused. `run` adds the manifest and the leaderboard.
        Ctrl-C (or `harness run`'s SIGTERM) raises `RunInterrupted` with the records up to
        the cell it stopped."""
        from tqdm import tqdm

        from harness.runner.determinism import pin_threads

        produced: list[Result] = []
        reused: list[Result] = []
        prepared: dict[str, BaseException | None] = {}
        bar = None
        try:
            pin_threads(self.threads)
            todo, reused = self.pending(plan)
            bar = tqdm(todo, desc="cells", unit="cell", disable=not self.ctx.progress)
            for cell in bar:
                bar.set_postfix_str(cell.label)
                records = run_cell(self.ctx, cell, prepared)
                self.store.append(records)
                produced.extend(records)
        except KeyboardInterrupt as stop:
            if bar is not None:
                bar.close()
            raise RunInterrupted(produced, reused) from stop
        return produced, reused

    def finish(self, plan: Plan, produced: list[Result], reused: list[Result], interrupted: bool = False) -> None:
        """The run manifest, generator grids, the leaderboard and the summary table; an
        interrupted run gets all but the grids, its manifest marked `interrupted`."""
        from harness.results.leaderboard import render_leaderboard, write_generator_grids
        from harness.results.manifest import RUNS, write_manifest

        out_dir = self.store.out_dir
        with output_errors(out_dir / RUNS):
            write_manifest(
                out_dir, self.ctx.device, produced, reused, limit=self.ctx.limit, seed=self.ctx.seed, interrupted=interrupted
            )
        if not interrupted:
            write_generator_grids(self.registry, plan.generators, out_dir, self.ctx.seed)
        with output_errors(out_dir / "LEADERBOARD.md"):
            render_leaderboard(out_dir, registry=self.registry)
        if self.ctx.progress:
            print(summary_table(produced, reused))


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
        spec = ctx.registry.config.datasets.get(cell.dataset)
        registered = ctx.registry.plugins.formats.get(spec.format) if spec is not None else None
        if spec is not None and registered is not None and (spec.root or spec.env):
            registered.locate(cell.dataset, spec)  # a missing dataset skips the cell before the encoder trains for it
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
    except (Exception, SystemExit) as exc:  # a plugin's sys.exit fails its own cell, not the run
        trace_path = ctx.out_dir / "errors" / f"{task.name}__{cell.dataset}__{encoder.name}.txt"
        with output_errors(trace_path):
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


SUMMARY_REASON_CHARS = 100
"""How much of a skipped or failed cell's message the summary table shows (the whole
message is in results.jsonl and the leaderboard's notes)."""


def short_reason(message: str, limit: int = SUMMARY_REASON_CHARS) -> str:
    """A message on one line, cut to `limit` characters ("..." marks the cut; ASCII, so
    any console encoding prints it)."""
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def summary_table(produced: list[Result], reused: list[Result]) -> str:
    """The headline value and status of every cell of the plan: computed in this run, or
    reused from results.jsonl (marked so); a skipped or failed cell shows why."""
    from tabulate import tabulate

    rows = [
        (r.encoder, r.task, r.dataset, r.metric, "" if r.value is None else f"{r.value:.4g}", status, f"{r.seconds:.1f}",
         "" if r.status == "ok" else short_reason(r.message))
        for records, mark in ((reused, " (reused)"), (produced, ""))
        for r in records
        if r.headline or r.status != "ok"
        for status in [r.status + mark]
    ]
    counts = {s: sum(r.status == s for r in produced) for s in ("ok", "skipped", "error")}
    table = tabulate(rows, headers=["encoder", "task", "dataset", "metric", "value", "status", "s", "reason"])
    return (
        f"{table}\n\n{len({r.cell_key for r in produced})} cells computed, "
        f"{len({r.cell_key for r in reused})} reused from results.jsonl; "
        f"records: {counts['ok']} ok, {counts['skipped']} skipped, {counts['error']} error "
        f"({platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')})"
    )
