"""LEADERBOARD.md, rendered from results.jsonl alone.

One table per task: rows are encoders grouped by training-data type (target, realistic,
procedural, white-box), columns are the task's headline metric per dataset, with the
paper's reported number beside ours where the paper has the same row. Skipped and
error cells are shown as such, with their messages as notes under the table. Figures
come from each task plugin's `figures` and from generator sample grids.
"""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from harness.version import __version__
from harness.cache import atomic_write
from harness.config.schema import GROUPS
from harness.results.manifest import newest_manifest
from harness.results.store import ResultStore, latest

if TYPE_CHECKING:
    import pandas

    from harness.config.registry import Registry

FIGURES = "figures"


def _format(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"


def _cell(rows: pandas.DataFrame) -> str:
    row = rows.iloc[-1]
    if row.status == "ok":
        return _format(row.value)
    return row.status


def task_table(frame: pandas.DataFrame, paper: pandas.DataFrame | None) -> tuple[str, list[str]]:
    """Markdown table of one task's headline results, and its notes."""
    from tabulate import tabulate

    headline = frame[frame.headline | (frame.status != "ok")]
    metrics = sorted(headline[headline.status == "ok"].metric.unique())
    columns = sorted(headline.dataset.unique())
    use_metric_in_header = len(metrics) > 1
    notes: list[str] = []
    table_rows = []
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
    for _, enc in encoders.iterrows():
        cells = [enc.encoder_group, enc.encoder]
        for dataset, metric in col_keys:
            if metric and metric.startswith("paper:"):
                match = paper[
                    (paper.dataset == dataset) & (paper.metric == metric[6:]) & (paper.paper_row == enc.paper_row)
                ] if paper is not None else None
                cells.append(_format(float(match.value.iloc[0])) if match is not None and not match.empty else "")
                continue
            rows = headline[(headline.encoder == enc.encoder) & (headline.dataset == dataset)]
            rows = rows[(rows.metric == metric) | (rows.status != "ok")] if metric else rows
            cells.append(_cell(rows) if not rows.empty else "")
            if not rows.empty and rows.iloc[-1].status != "ok":
                notes.append(f"{enc.encoder} / {dataset}: {rows.iloc[-1].status}: {rows.iloc[-1].message}")
        table_rows.append(cells)
    return tabulate(table_rows, headers=header, tablefmt="github"), sorted(set(notes))


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
        lines += [f"Last run: [{manifest.relative_to(out_dir).as_posix()}]({manifest.relative_to(out_dir).as_posix()}) "
                  "(command, code revision, library versions, machine, thread counts, cells computed and reused).", ""]
    lines += [
        "Rows are grouped by the encoder's training data: target (the benchmark's own domain), "
        "realistic (other real images), procedural, white-box. `paper` columns give the number "
        "the paper reports for the same row; `skipped` and `error` cells are explained below "
        "each table.",
        "",
    ]
    for task_name in ([] if frame.empty else list(dict.fromkeys(frame.task))):
        task_frame = frame[frame.task == task_name]
        plugin = task_frame.task_plugin.iloc[-1]
        task_cls = registry.plugins.classes["task"].get(plugin)
        paper = task_cls.cls.paper_numbers() if task_cls else None
        title = (task_cls.cls.title if task_cls else "") or plugin
        table, notes = task_table(task_frame, paper)
        lines += [f"## {task_name}: {title}", "", table, ""]
        lines += [f"- {note}" for note in notes] + ([""] if notes else [])
        if task_cls:
            for path in task_cls.cls.figures(task_frame.reset_index(drop=True), figures_dir):
                lines += [f"![{path.stem}]({path.relative_to(out_dir).as_posix()})", ""]
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
            _format(info.get("wall_time_s")), _format(info.get("images_per_s")),
            _format(loss[0]) if loss else "", _format(sum(tail) / len(tail)) if tail else "", info.get("device", ""),
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
