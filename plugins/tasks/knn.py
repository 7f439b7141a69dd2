"""kNN classification through the visual memory (the paper's Table 1).

Memory = the train split's embeddings, queries = the test split's. Every k in `ks`
(default {1, 2, 3, 4, 5, 10, 20, 100, 200}) is reported with both votes (DINO's weighted
rule and the majority count), top-1 and top-5 (top-5 over min(5, k) classes, as DINO
does). The headline is fixed in advance: weighted vote, k = `headline_k` (20), reported
even when `ks` leaves it out. The released scripts report the best k on the test split;
that is selection on test, so it is never the headline. The headline record also carries
`outcomes`: which test images its top-1 got right (packed bits), for a bootstrap interval.

A k larger than the memory (the train split) votes over the whole memory; its records
keep the requested `k` (the row of the table it answers) and add `k_used`, the number of
neighbours that actually voted, so a clipped k is never reported as if it had been used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pydantic import Field, PositiveInt

from harness.hookspecs import hookimpl
from harness.kinds import Task
from harness.results.store import pack_outcomes

from harness_plugins.tasks._memory import NeighbourVoteParams, train_memory

KS = (1, 2, 3, 4, 5, 10, 20, 100, 200)
VOTES = ("weighted", "majority")


def topk_accuracies(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[float, float]:
    """Top-1 and top-5 (over min(5, k) classes) accuracy in percent from class scores."""
    top1 = scores.argmax(axis=1)
    # stable descending order: ties go to the lower class index, as argmax does
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, : min(5, k)]
    top5 = (ranked == labels[:, None]).any(axis=1)
    return 100.0 * float((top1 == labels).mean()), 100.0 * float(top5.mean())


class KNNTask(Task):
    """kNN top-1 / top-5 through the visual memory, for every k and both votes."""

    class Params(NeighbourVoteParams):
        ks: list[PositiveInt] = Field(list(KS), min_length=1, description="numbers of neighbours k to report")

    params: Params
    default_datasets = ("digits",)
    title = "kNN classification (top-1 %)"

    def run(self, encoder: Any, ctx: Any) -> list:
        from harness.memory import vote_mass

        ks, temperature, headline_k = self.params.reported_ks, self.params.temperature, self.params.headline_k
        data, memory, test, test_labels = train_memory(ctx, "use the medmnist task, which scores each label")
        widest = min(max(ks), len(memory))
        sims, ids = memory.search(test, widest)
        neighbour_labels = memory.labels_of(ids)
        records = []
        for vote in VOTES:
            for k in ks:
                used = min(k, len(memory))
                scores = vote_mass(sims[:, :used].astype(np.float64), neighbour_labels[:, :used], vote, temperature, data.num_classes)
                top1, top5 = topk_accuracies(scores, test_labels, used)
                is_headline = vote == "weighted" and k == headline_k
                clipped = {"k_used": used} if used != k else {}
                records.append(ctx.result("top1", top1, n=len(test_labels), headline=is_headline, k=k, vote=vote, **clipped))
                if is_headline:  # which test images were right, for the leaderboard's bootstrap interval
                    records[-1].outcomes = pack_outcomes(scores.argmax(axis=1) == test_labels)
                records.append(ctx.result("top5", top5, n=len(test_labels), k=k, vote=vote, **clipped))
        return records

    @classmethod
    def paper_numbers(cls) -> Any:
        from harness_plugins.tasks._paper import paper_numbers

        return paper_numbers("knn")

    @classmethod
    def figures(cls, results: Any, out_dir: Path) -> list[Path]:
        """Top-1 against k (weighted vote), one panel per dataset, one line per encoder."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ok = results[(results.status == "ok") & (results.metric == "top1")]
        ok = ok[ok.params.map(lambda p: p.get("vote") == "weighted")]
        if ok.empty:
            return []
        datasets = sorted(ok.dataset.unique())
        fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.4), squeeze=False)
        for ax, dataset in zip(axes[0], datasets):
            subset = ok[ok.dataset == dataset]
            for encoder, rows in subset.groupby("encoder"):
                ks = rows.params.map(lambda p: p["k"]).to_numpy()
                order = np.argsort(ks)
                ax.plot(ks[order], rows.value.to_numpy()[order], marker="o", label=encoder)
            ax.set_xscale("log")
            ax.set_xlabel("k")
            ax.set_ylabel("top-1 %")
            ax.set_title(dataset)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{results.task.iloc[0]}_top1_vs_k.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]


@hookimpl
def register_tasks(register: Any) -> None:
    register("knn", KNNTask)
