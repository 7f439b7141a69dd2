"""Privacy of the visual memory (the paper's section 6 and Figure 12).

Memory = the train split's embeddings, queries = the test split's. A memory row is
non-private when removing it changes the prediction of at least one query; the count
is exact (`VisualMemory.privacy_report` equals brute-force leave-one-out). Reported per
encoder and dataset: kNN top-1 with the same rule, the number of non-private rows and
their percentage of the memory (the headline), plus the queries whose prediction some
single removal changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, PositiveInt

from harness.hookspecs import hookimpl
from harness.kinds import Task

from harness_plugins.tasks._memory import train_memory


class PrivacyTask(Task):
    """The memory rows whose removal changes some query's kNN prediction (exact leave-one-out)."""

    class Params(Task.Params):
        k: PositiveInt = Field(20, description="neighbours per query")
        vote: Literal["weighted", "majority"] = Field("weighted", description="kNN vote: DINO's exp(similarity / T) weights or counts")
        temperature: float = Field(0.07, gt=0, description="T of the weighted vote")

    params: Params
    default_datasets = ("digits",)
    title = "Privacy: non-private memory rows (count and % of the memory)"

    def run(self, encoder: Any, ctx: Any) -> list:
        k, vote, temperature = self.params.k, self.params.vote, self.params.temperature
        _, memory, test, test_labels = train_memory(ctx, "the privacy audit needs one class per memory row")
        predictions = memory.classify(test, k=k, vote=vote, temperature=temperature)
        report = memory.privacy_report(test, k=k, vote=vote, temperature=temperature)
        top1 = 100.0 * float((predictions == test_labels).mean())
        params = {"k": k, "vote": vote, "temperature": temperature}
        if k > len(memory):  # the vote used the whole memory: say so, as the knn task does
            params["k_used"] = len(memory)
        n_memory, n_queries = report.memory_size, report.num_queries
        return [
            ctx.result("top1", top1, n=n_queries, **params),
            ctx.result("non_private_count", report.count, n=n_memory, headline=True, **params),
            ctx.result("non_private_fraction", report.fraction, n=n_memory, headline=True, **params),
            ctx.result("changed_query_fraction", 100.0 * report.changed_queries / max(1, n_queries), n=n_queries, **params),
        ]

    @classmethod
    def paper_numbers(cls) -> Any:
        from harness_plugins.tasks._paper import paper_numbers

        return paper_numbers("privacy")

    @classmethod
    def figures(cls, results: Any, out_dir: Path) -> list[Path]:
        """The paper's Figure 12: non-private % against kNN top-1, one labelled point per
        encoder, one panel per dataset."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ok = results[(results.status == "ok") & results.metric.isin(["top1", "non_private_fraction"])]
        if ok.empty:
            return []
        table = ok.pivot_table(index=["dataset", "encoder"], columns="metric", values="value", aggfunc="last")
        if not {"top1", "non_private_fraction"} <= set(table.columns):
            return []
        table = table.dropna(subset=["top1", "non_private_fraction"]).reset_index()
        if table.empty:
            return []
        datasets = sorted(table.dataset.unique())
        fig, axes = plt.subplots(1, len(datasets), figsize=(4.8 * len(datasets), 3.8), squeeze=False)
        for ax, dataset in zip(axes[0], datasets):
            rows = table[table.dataset == dataset]
            ax.scatter(rows.top1, rows.non_private_fraction, color="tab:blue", zorder=3)
            for row in rows.itertuples():
                point = (row.top1, row.non_private_fraction)
                ax.annotate(row.encoder, point, textcoords="offset points", xytext=(4, 3), fontsize=7)
            if len(rows) >= 2 and rows.top1.nunique() >= 2:
                slope, intercept = np.polyfit(rows.top1, rows.non_private_fraction, 1)
                xs = np.linspace(rows.top1.min(), rows.top1.max(), 2)
                ax.plot(xs, slope * xs + intercept, color="tab:gray", linestyle="--", linewidth=1, label="linear fit")
                ax.legend(fontsize=7)
            ax.set_xlabel("kNN top-1 %")
            ax.set_ylabel("non-private memory rows %")
            ax.set_title(dataset)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{results.task.iloc[0]}_nonprivate_vs_accuracy.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]


@hookimpl
def register_tasks(register: Any) -> None:
    register("privacy", PrivacyTask)
