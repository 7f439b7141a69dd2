"""The leaderboard's "Metric against depth" section, for layer sweeps.

A sweep's instances are named `<base>.layer<i>` (one per feature level, see
`Plugin.variants`); the section draws, per task, the headline metric against `i`, one
line per (base encoder, dataset), and tabulates each line's best layer beside its
deepest. Higher values count as better, as in the leaderboard's ranking.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from harness.results.stats import format_value

if TYPE_CHECKING:
    import pandas

LAYER_NAME = re.compile(r"^(?P<base>.+)\.layer(?P<layer>\d+)$")


def sweep_rows(frame: pandas.DataFrame) -> pandas.DataFrame:
    """The ok headline records of swept encoders, with columns `base` and `layer` added,
    sorted by (task, base, dataset, layer)."""
    if frame.empty:
        return frame
    found = frame.encoder.str.extract(LAYER_NAME)
    keep = found.base.notna() & frame.headline.astype(bool) & (frame.status == "ok") & frame.value.notna()
    rows = frame[keep].assign(base=found.base[keep], layer=found.layer[keep].astype(int))
    return rows.sort_values(["task", "base", "dataset", "layer"])


def plot_depth(rows: pandas.DataFrame, task: str, path: Path) -> Path:
    """One task's headline metric against layer, one line per (base encoder, dataset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for (base, dataset), line in rows.groupby(["base", "dataset"], sort=True):
        ax.plot(line.layer, line.value, marker="o", linewidth=1, label=f"{base} / {dataset}")
    ax.set_xlabel("layer (feature level)")
    ax.set_ylabel(", ".join(sorted(rows.metric.unique())))
    ax.set_title(task, fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def depth_section(frame: pandas.DataFrame, out_dir: Path, figures_dir: Path) -> list[str]:
    """Markdown lines of the section (a figure per task and a table of best and last
    layers), with the figures written to `figures_dir`; [] when no encoder was swept."""
    from tabulate import tabulate

    rows = sweep_rows(frame)
    if rows.empty:
        return []
    lines = [
        "## Metric against depth",
        "",
        "Layer sweeps (`<encoder>.layer<i>`: the encoder's features at feature level i, "
        "0 the first): the headline metric at each level, and the best level beside the last one swept.",
        "",
    ]
    table = []
    for task, task_rows in rows.groupby("task", sort=False):
        safe = re.sub(r"[^A-Za-z0-9._+-]", "_", str(task))
        figure = plot_depth(task_rows, str(task), figures_dir / f"depth_{safe}.png")
        lines += [f"![depth {task}]({figure.relative_to(out_dir).as_posix()})", ""]
        for (base, dataset), line in task_rows.groupby(["base", "dataset"], sort=True):
            best, last = line.loc[line.value.idxmax()], line.iloc[-1]
            table.append([base, task, dataset, line.metric.iloc[-1], int(best.layer), format_value(best.value),
                          int(last.layer), format_value(last.value)])
    headers = ["encoder", "task", "dataset", "metric", "best layer", "value", "last layer", "value"]
    lines += [tabulate(table, headers=headers, tablefmt="github"), ""]
    return lines
