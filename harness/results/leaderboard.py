"""LEADERBOARD.md, rendered from results.jsonl alone.

One table per task: rows are encoders grouped by training-data type (target, realistic,
procedural, white-box), columns are the task's headline metric per dataset, with the
paper's reported number beside ours where the paper has the same row, and 95 %
intervals where the records allow (harness.results.stats). Skipped and
error cells are shown as such, with their messages as notes under the table. Figures
come from each task plugin's `figures` and from generator sample grids.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.version import __version__
from harness.cache import atomic_write
from harness.config.schema import GROUPS
from harness.results.depth import depth_section
from harness.results.manifest import manifest_says_interrupted, newest_manifest
from harness.results.paths import FIGURES
from harness.results.ranking import generator_ranking_section, recorded_specs, seed_groups
from harness.results.stats import bootstrap_interval, format_value, overlap, seed_interval
from harness.results.store import ResultStore, latest, unpack_outcomes

if TYPE_CHECKING:
    import pandas

    from harness.config.registry import Registry


@dataclass
class _Cell:
    """One table cell: its text, and for an ok value the number, its 95 % interval and
    whether a `--limit` subset went into it."""

    text: str = ""
    value: float | None = None
    interval: tuple[float, float] | None = None
    subset: bool = False


SUBSET_MARK = "†"
"""Marks a value computed on a `--limit` subset, which only a cell without a whole-data record shows."""


def _with_interval(value: float | None, interval: tuple[float, float] | None) -> str:
    """`value ± h`, h (half the interval) to as many decimals as the value."""
    if value is None or interval is None:
        return format_value(value)
    text = format_value(value)
    return f"{text} ± {(interval[1] - interval[0]) / 2:.{len(text.partition('.')[2])}f}"


def record_interval(row: Any) -> tuple[float, float] | None:
    """The bootstrap interval of a record's value from its per-image `outcomes` (None
    without them). A value is the mean of its outcomes, in percent or as a fraction."""
    outcomes = getattr(row, "outcomes", None)
    if not isinstance(outcomes, str) or row.value is None:
        return None
    bits = unpack_outcomes(outcomes, int(row.n))  # a ValueError names what is wrong
    if bits.size == 0:
        return None
    mean = float(bits.mean())
    scale = next((s for s in (100.0, 1.0) if abs(s * mean - float(row.value)) <= 1e-6 * max(s, abs(float(row.value)))), None)
    if scale is None:
        raise ValueError(f"its value {row.value} is not the mean of its {bits.size} outcomes ({mean})")
    low, high = bootstrap_interval(bits)
    return scale * low, scale * high


def _cell(rows: pandas.DataFrame, notes: list[str]) -> _Cell:
    row = rows.iloc[-1]
    if row.status != "ok":
        return _Cell(row.status)
    try:
        interval = record_interval(row)
    except ValueError as exc:
        notes.append(f"{row.encoder} / {row.dataset}: no interval: the record's outcomes are unusable: {exc}")
        interval = None
    limit = row["keys"].get("limit") if isinstance(row["keys"], dict) else None
    if limit is not None:
        notes.append(f"{SUBSET_MARK}: computed with `--limit {limit}`, on a subset of each split (no record of the whole data yet)")
    return _marked(_Cell(_with_interval(row.value, interval), row.value, interval, subset=limit is not None))


def _marked(cell: _Cell) -> _Cell:
    """`cell` with SUBSET_MARK after its text when a `--limit` value went into it."""
    return _Cell(f"{cell.text} {SUBSET_MARK}", cell.value, cell.interval, cell.subset) if cell.subset else cell


def _seed_cell(cells: list[_Cell]) -> _Cell:
    """The mean over training seeds of one column, with its t-interval."""
    values = [cell.value for cell in cells if cell.value is not None and not math.isnan(cell.value)]
    if not values:
        return _Cell()
    interval = seed_interval(values)
    mean = sum(values) / len(values)
    subset = any(cell.subset for cell in cells if cell.value is not None)  # a mean over a --limit value
    return _marked(_Cell(_with_interval(mean, interval), mean, interval, subset))


def _sort_value(cells: list[_Cell]) -> float | None:
    values = [cell.value for cell in cells if cell.value is not None and not math.isnan(cell.value)]
    return sum(values) / len(values) if values else None


def _tied(a: list[_Cell], b: list[_Cell]) -> bool:
    """Whether two rows' intervals overlap in every column where both have one (and one at least)."""
    shared = [(x.interval, y.interval) for x, y in zip(a, b) if x.interval is not None and y.interval is not None]
    return bool(shared) and all(overlap(x, y) for x, y in shared)


def _ranks(rows: list[list[_Cell]]) -> list[str]:
    """Competition ranks of rows sorted best first; rows whose intervals overlap the row
    above share its rank, and every rank shared this way is marked `=`."""
    ranks: list[int | None] = []
    for i, cells in enumerate(rows):
        if _sort_value(cells) is None:
            ranks.append(None)
        elif i and ranks[-1] is not None and _tied(rows[i - 1], cells):
            ranks.append(ranks[-1])
        else:
            ranks.append(i + 1)
    return ["" if r is None else ("=" if ranks.count(r) > 1 else "") + str(r) for r in ranks]


def task_table(
    frame: pandas.DataFrame, paper: pandas.DataFrame | None, seeds: dict[str, list[str]] | None = None
) -> tuple[str, list[str]]:
    """Markdown table of one task's headline results, and its notes. `seeds` maps a label
    to encoders that are training seeds of one recipe: a row for their mean is added.
    Tables with test intervals (records with `outcomes`) are sorted by value, best first."""
    from tabulate import tabulate

    headline = frame[frame.headline | (frame.status != "ok")]
    metrics = sorted(headline[headline.status == "ok"].metric.unique())
    columns = sorted(headline.dataset.unique())
    use_metric_in_header = len(metrics) > 1
    notes: list[str] = []
    header = ["group", "encoder"]
    col_keys: list[tuple[str, str | None]] = []
    for dataset in columns:
        for metric in metrics or [None]:
            col_keys.append((dataset, metric))
            header.append(f"{dataset} {metric}" if use_metric_in_header else dataset)
            if paper is not None and metric is not None and not paper[(paper.dataset == dataset) & (paper.metric == metric)].empty:
                header.append("paper")
                col_keys.append((dataset, f"paper:{metric}"))
    order = {g: i for i, g in enumerate(GROUPS)}
    encoders = (
        headline[["encoder", "encoder_group", "paper_row"]]
        .drop_duplicates("encoder", keep="last")
        .assign(rank=lambda d: d.encoder_group.map(lambda g: order.get(g, len(order))))
        .sort_values(["rank", "encoder"])
    )
    data_keys = [key for key in col_keys if not (key[1] or "").startswith("paper:")]
    rows: list[tuple[str, str, Any, dict[tuple[str, str | None], _Cell]]] = []
    for _, enc in encoders.iterrows():
        cells: dict[tuple[str, str | None], _Cell] = {}
        for dataset, metric in data_keys:
            found = headline[(headline.encoder == enc.encoder) & (headline.dataset == dataset)]
            found = found[(found.metric == metric) | (found.status != "ok")] if metric else found
            cells[(dataset, metric)] = _cell(found, notes) if not found.empty else _Cell()
            if not found.empty and found.iloc[-1].status != "ok":
                notes.append(f"{enc.encoder} / {dataset}: {found.iloc[-1].status}: {found.iloc[-1].message}")
        rows.append((enc.encoder_group, enc.encoder, enc.paper_row, cells))
    by_name = {row[1]: row for row in rows}
    for label, members in (seeds or {}).items():
        present = [by_name[name] for name in members if name in by_name]
        if len(present) >= 2:
            paper_rows = {row[2] for row in present}
            cells = {key: _seed_cell([row[3][key] for row in present]) for key in data_keys}
            paper_row = paper_rows.pop() if len(paper_rows) == 1 else None
            rows.append((present[0][0], f"{label} (mean of {len(present)} seeds)", paper_row, cells))
    ranked = any(cell.interval is not None for row in rows[: len(encoders)] for cell in row[3].values())
    if ranked:
        def best_first(row: tuple) -> tuple:
            value = _sort_value(list(row[3].values()))
            return (value is None, -(value or 0.0), order.get(row[0], len(order)), row[1])

        rows.sort(key=best_first)
    else:
        rows.sort(key=lambda row: (order.get(row[0], len(order)), row[1]))
    ranks = _ranks([list(row[3].values()) for row in rows]) if ranked else []
    table_rows = []
    for i, (group, name, paper_row, cells) in enumerate(rows):
        line = [group, name]
        for dataset, metric in col_keys:
            if metric and metric.startswith("paper:"):
                match = paper[
                    (paper.dataset == dataset) & (paper.metric == metric[6:]) & (paper.paper_row == paper_row)
                ] if paper is not None else None
                line.append(format_value(float(match.value.iloc[0])) if match is not None and not match.empty else "")
            else:
                line.append(cells[(dataset, metric)].text)
        table_rows.append(line + ([ranks[i]] if ranked else []))
    return tabulate(table_rows, headers=header + (["rank"] if ranked else []), tablefmt="github"), sorted(set(notes))


def provenance(frame: pandas.DataFrame) -> str:
    devices = sorted({str(k.get("device", "?")) for k in frame["keys"]}) if not frame.empty else []
    versions = sorted({str(k.get("code_version", "?")) for k in frame["keys"]}) if not frame.empty else []
    newest = frame.created.max() if not frame.empty else ""
    return (
        f"harness {', '.join(versions) or __version__}; results up to {newest}; rendered "
        f"{_dt.date.today().isoformat()}; machine {platform.machine()} {platform.system()}, "
        f"Python {platform.python_version()}; device {', '.join(devices) or '?'}"
    )


def render_leaderboard(out_dir: str | Path, registry: Registry | None = None) -> Path:
    """Write `<out_dir>/LEADERBOARD.md` (and figures) from `<out_dir>/results.jsonl`."""
    import pandas

    from harness.config.registry import active_registry

    out_dir = Path(out_dir)
    registry = registry or active_registry()
    records = latest(ResultStore(out_dir).read())
    frame = pandas.DataFrame([r.model_dump() for r in records])
    figures_dir = out_dir / FIGURES
    figures_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Leaderboard", "", f"_{provenance(frame)}_" if not frame.empty else "_no results yet_", ""]
    manifest = newest_manifest(out_dir)
    if manifest is not None:
        link = manifest.relative_to(out_dir).as_posix()
        stopped = " It was interrupted: the same command (without --force) computes the cells it did not reach." if manifest_says_interrupted(manifest) else ""
        lines += [f"Last run: [{link}]({link}) "
                  f"(command, code revision, library versions, machine, thread counts, cells computed and reused).{stopped}", ""]
    lines += [
        "`group` is the encoder's training data: target (the benchmark's own domain), "
        "realistic (other real images), procedural, white-box, or unspecified (a model given to "
        "`harness.evaluate` without `group=`); tables without intervals list "
        "their rows by group. `paper` columns give the number "
        "the paper reports for the same row; `skipped` and `error` cells are explained below "
        "each table.",
        "",
        "`value ± h`: h is half the 95 % interval. For one encoder it is a percentile bootstrap "
        "over the test images (2000 resamples, seed 0); for a `(mean of N seeds)` row, encoders "
        "whose registry entries differ only in their seed, it is the t-interval of the mean "
        "over seeds. Tables with intervals list the rows best first (by the mean over their "
        "columns); `rank` marks with `=` rows whose intervals overlap the row above in every "
        "column both have, an order the data does not resolve.",
        "",
    ]
    for task_name in ([] if frame.empty else list(dict.fromkeys(frame.task))):
        task_frame = frame[frame.task == task_name]
        plugin = task_frame.task_plugin.iloc[-1]
        task_cls = registry.plugins.classes["task"].get(plugin)
        paper = task_cls.cls.paper_numbers() if task_cls else None
        title = (task_cls.cls.title if task_cls else "") or plugin
        table, notes = task_table(task_frame, paper, seed_groups(registry, task_frame.encoder.unique(), recorded_specs(task_frame)))
        lines += [f"## {task_name}: {title}", "", table, ""]
        lines += [f"- {note}" for note in notes] + ([""] if notes else [])
        if task_cls:
            for path in task_cls.cls.figures(task_frame.reset_index(drop=True), figures_dir):
                lines += [f"![{path.stem}]({path.relative_to(out_dir).as_posix()})", ""]
    lines += generator_ranking_section(frame, registry)
    lines += depth_section(frame, out_dir, figures_dir)
    lines += training_section(out_dir, figures_dir)
    grids = sorted((figures_dir / "generators").glob("*.png"))
    if grids:
        lines += ["## Generators", "", "Samples of each procedural generator in the profile.", ""]
        for grid in grids:
            lines += [f"**{grid.stem}**", "", f"![{grid.stem}]({grid.relative_to(out_dir).as_posix()})", ""]
    path = out_dir / "LEADERBOARD.md"
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines)))
    return path


def training_section(out_dir: Path, figures_dir: Path) -> list[str]:
    """A table of how each trained encoder was trained, and its loss curves, from the
    summaries the runner keeps in `<out>/training/`."""
    import json

    from tabulate import tabulate

    from harness.results.store import TRAINING

    summaries = {}
    for path in sorted((out_dir / TRAINING).glob("*.json")):
        try:
            summaries[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a summary is an illustration: a torn file is left out
    if not summaries:
        return []
    rows = []
    for name, info in summaries.items():
        loss = info.get("loss") or []
        tail = loss[-10:]
        rows.append([
            name, info.get("data", ""), info.get("steps", ""), info.get("images_seen", ""),
            format_value(info.get("wall_time_s")), format_value(info.get("images_per_s")),
            format_value(loss[0]) if loss else "", format_value(sum(tail) / len(tail)) if tail else "", info.get("device", ""),
        ])
    headers = ["encoder", "data", "steps", "images seen", "wall s", "images/s", "first loss", "last-10 loss", "device"]
    lines = ["## Training", "", "How each trained encoder in these results was trained.", ""]
    lines += [tabulate(rows, headers=headers, tablefmt="github"), ""]
    figure = plot_losses(summaries, figures_dir / "training_loss.png")
    if figure is not None:
        lines += [f"![training loss]({figure.relative_to(out_dir).as_posix()})", ""]
    return lines


def plot_losses(summaries: dict[str, dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {name: info["loss"] for name, info in summaries.items() if info.get("loss")}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, loss in curves.items():
        ax.plot(range(1, len(loss) + 1), loss, label=name, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_generator_grids(registry: Registry, names: list[str], out_dir: Path, seed: int = 0) -> list[Path]:
    """Sample grids (PNG) of the named generators for the leaderboard; kept if already there."""
    import warnings

    written = []
    for name in names:
        path = out_dir / FIGURES / "generators" / f"{name}.png"
        if not path.exists():
            try:
                from harness.streaming import write_grid

                write_grid(registry.create("generator", name), path, n=16, size=96, seed=seed)
            except Exception as exc:  # a grid is an illustration: never fail a run for it
                warnings.warn(f"could not draw a sample grid for generator {name!r}: {exc}")
                continue
        written.append(path)
    return written
