"""MedMNIST classification through the visual memory (the paper's Table 3).

Memory = the train split's embeddings, queries = the test split's (the `medmnist`
dataset format). Class scores are the normalised vote mass of the k nearest memory
rows: `VisualMemory.class_scores` (DINO's weighted vote, the sum of exp(sim / T) per
class, or the majority count) with each row divided by its sum. ACC and AUC are then
computed exactly as the `medmnist` package's Evaluator does:

* binary-class: ACC = accuracy of score[:, -1] > 0.5, AUC = ROC AUC of score[:, -1];
* multi-class (and ordinal-regression): ACC = accuracy of argmax, AUC = mean over
  classes of the one-vs-rest ROC AUC of score[:, c];
* multi-label (chestmnist, not in the paper): per label, score = the vote mass of the
  neighbours carrying that label over the total vote mass (one memory search);
  ACC = mean over labels of the accuracy of score > 0.5, AUC = mean over labels of
  the ROC AUC.

Both are reported in percent (100 x the Evaluator's value), for every k in `ks` and
both votes; the headline is ACC with the weighted vote at k = `headline_k` (20), fixed
in advance (Table 3 reports ACC). The headline cell's scores are saved to
`<out>/medmnist/<dataset>__<encoder>.npz` (`scores`, `labels`) so that any evaluator can
be run on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pydantic import Field, PositiveInt

from harness.hookspecs import hookimpl
from harness.kinds import Task

from harness_plugins.tasks._memory import NeighbourVoteParams

KS = (1, 5, 10, 20, 100, 200)
VOTES = ("weighted", "majority")
PAPER_DATASETS = (
    "pathmnist", "dermamnist", "octmnist", "pneumoniamnist", "breastmnist",
    "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist",
)
"""The paper's 10 datasets in Table 3's column order (their registry names)."""
BEST_ROW = "Best from original paper"


def medmnist_metrics(labels: np.ndarray, scores: np.ndarray, label_type: str, threshold: float = 0.5) -> tuple[float, float | None]:
    """(ACC, AUC) as fractions, defined as medmnist.evaluator's getACC / getAUC.

    AUC is None where it is undefined (a class absent from the queries).
    """
    from sklearn.metrics import accuracy_score, roc_auc_score

    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    try:
        if label_type == "multi-label, binary-class":
            acc = float(np.mean([accuracy_score(labels[:, j], scores[:, j] > threshold) for j in range(labels.shape[1])]))
            auc = float(np.mean([roc_auc_score(labels[:, j], scores[:, j]) for j in range(scores.shape[1])]))
        elif label_type == "binary-class":
            positive = scores[:, -1] if scores.ndim == 2 else scores
            acc = float(accuracy_score(labels, positive > threshold))
            auc = float(roc_auc_score(labels, positive))
        else:
            acc = float(accuracy_score(labels, np.argmax(scores, axis=-1)))
            auc = float(np.mean([roc_auc_score((labels == c).astype(float), scores[:, c]) for c in range(scores.shape[1])]))
    except ValueError:  # roc_auc_score with one class present
        return acc, None
    return acc, auc


def normalised_scores(sims: np.ndarray, neighbour_labels: np.ndarray, vote: str, temperature: float, num_classes: int) -> np.ndarray:
    """Vote mass per class divided by its row sum; neighbour_labels [q, k] or [q, k, L]."""
    from harness.memory import vote_mass

    if neighbour_labels.ndim == 3:  # multi-label: per label, the share of the vote mass
        weights = np.exp(sims / temperature) if vote == "weighted" else np.ones_like(sims)
        mass = np.einsum("qk,qkl->ql", weights, neighbour_labels.astype(np.float64))
        return mass / weights.sum(axis=1, keepdims=True)
    mass = vote_mass(sims, neighbour_labels, vote, temperature, num_classes)
    return mass / mass.sum(axis=1, keepdims=True)


class MedMNISTTask(Task):
    """MedMNIST ACC and AUC of the normalised kNN vote, as the medmnist Evaluator computes them."""

    class Params(NeighbourVoteParams):
        ks: list[PositiveInt] = Field(list(KS), min_length=1, description="numbers of neighbours k to report")

    params: Params
    default_datasets = PAPER_DATASETS
    title = "MedMNIST kNN classification (ACC %, Table 3)"

    def run(self, encoder: Any, ctx: Any) -> list:
        from harness.cache import save_arrays
        from harness.memory import VisualMemory

        ks, temperature, headline_k = self.params.reported_ks, self.params.temperature, self.params.headline_k
        data = ctx.open_dataset()
        label_type = getattr(data, "label_type", "multi-class")
        train = ctx.embed_split(data.train, "train")
        test = ctx.embed_split(data.test, "test")
        train_labels = np.asarray(data.train.labels)
        test_labels = np.asarray(data.test.labels)
        memory = VisualMemory(train.shape[1], device=ctx.device)
        multilabel = train_labels.ndim == 2
        memory.add(train, np.zeros(len(train), np.int64) if multilabel else train_labels)
        if multilabel:  # one search; per label, the share of the vote mass carrying it
            sims, ids = memory.search(test, min(max(ks), len(memory)))
            sims, neighbour_labels = sims.astype(np.float64), train_labels[ids]

        def scores_for(k: int, vote: str) -> np.ndarray:
            if multilabel:
                used = min(k, len(memory))
                return normalised_scores(sims[:, :used], neighbour_labels[:, :used], vote, temperature, data.num_classes)
            mass = memory.class_scores(test, k=k, vote=vote, temperature=temperature, num_classes=data.num_classes)
            return mass / mass.sum(axis=1, keepdims=True)

        records = []
        for vote in VOTES:
            for k in ks:
                scores = scores_for(k, vote)
                acc, auc = medmnist_metrics(test_labels, scores, label_type)
                is_headline = vote == "weighted" and k == headline_k
                records.append(ctx.result("acc", 100.0 * acc, n=len(test_labels), headline=is_headline, k=k, vote=vote))
                if auc is not None:
                    records.append(ctx.result("auc", 100.0 * auc, n=len(test_labels), k=k, vote=vote))
                if is_headline:
                    out = Path(ctx.run.out_dir) / "medmnist" / f"{ctx.dataset}__{encoder.name}.npz"
                    save_arrays(out, scores=scores, labels=test_labels, k=np.int64(k), temperature=np.float64(temperature))
        return records

    @classmethod
    def paper_numbers(cls) -> Any:
        from harness_plugins.tasks._paper import paper_numbers

        return paper_numbers("medmnist")

    @classmethod
    def table3(cls, results: Any) -> Any:
        """The paper's Table 3 layout: rows = "Best from original paper", then each
        encoder (ours) with the paper's number for its row where it has one; columns =
        datasets; values = headline ACC (%)."""
        import pandas

        ok = results[(results.status == "ok") & results.headline & (results.metric == "acc")]
        paper = cls.paper_numbers()
        datasets = [d for d in PAPER_DATASETS if d in set(ok.dataset)] + sorted(set(ok.dataset) - set(PAPER_DATASETS))
        rows = []
        best = paper[paper.paper_row == BEST_ROW].set_index("dataset").value
        rows.append({"row": BEST_ROW, "source": "paper", **{d: best.get(d) for d in datasets}})
        for encoder, group in ok.groupby("encoder", sort=False):
            values = group.drop_duplicates("dataset", keep="last").set_index("dataset").value
            rows.append({"row": encoder, "source": "ours", **{d: values.get(d) for d in datasets}})
            paper_row = group.paper_row.iloc[-1]
            reported = paper[paper.paper_row == paper_row].set_index("dataset").value if paper_row else None
            if reported is not None and not reported.empty:
                rows.append({"row": f"{paper_row} (paper)", "source": "paper", **{d: reported.get(d) for d in datasets}})
        return pandas.DataFrame(rows)

    @classmethod
    def figures(cls, results: Any, out_dir: Path) -> list[Path]:
        """Table 3 as a figure; cells at or above the best of the original paper in bold."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        table = cls.table3(results)
        if len(table) <= 1:
            return []
        datasets = [c for c in table.columns if c not in ("row", "source")]
        best = table.iloc[0]
        text = [[("" if v is None or v != v else f"{v:.2f}") for v in row[datasets]] for _, row in table.iterrows()]
        fig, ax = plt.subplots(figsize=(max(5.5, 1.0 * len(datasets) + 2.6), 0.36 * len(table) + 1.1))
        ax.axis("off")
        shown = ax.table(cellText=text, rowLabels=list(table.row), colLabels=[d.replace("mnist", "") for d in datasets], loc="center", cellLoc="center")
        shown.auto_set_font_size(False)
        shown.set_fontsize(8)
        shown.scale(1.0, 1.25)
        for r, (_, row) in enumerate(table.iterrows(), start=1):
            for c, dataset in enumerate(datasets):
                value, reference = row[dataset], best[dataset]
                cell = shown[r, c]
                if row.source == "paper":
                    cell.set_facecolor("#f0f0f0")
                elif value is not None and reference is not None and value == value and value >= reference:
                    cell.get_text().set_fontweight("bold")
        ax.set_title("MedMNIST kNN ACC (%); grey: the paper's numbers;\nbold: at or above the original paper's best", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{results.task.iloc[0]}_table3.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return [path]


@hookimpl
def register_tasks(register: Any) -> None:
    register("medmnist", MedMNISTTask)
