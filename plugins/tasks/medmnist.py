"""MedMNIST classification through the visual memory (the paper's Table 3).

Memory = the train split's embeddings, queries = the test split's (the `medmnist`
dataset format, or any classification dataset: a `table` with 0/1 label columns gives a
multi-label one). Class scores are the normalised vote mass of the k nearest memory
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

Two protocols (`protocol`):

* `fixed` (default): both metrics are reported in percent (100 x the Evaluator's value),
  for every k in `ks` and both votes; the headline is ACC with the weighted vote at
  k = `headline_k` (20), fixed in advance. A k above the memory size votes over the
  whole memory and its records say so (`k_used`).
* `released` (the paper's released evaluation script, whose numbers Table 3 reports):
  weighted vote (T = `temperature`), k chosen on the **validation** split as the k in
  1..200 (at most the memory size) with the best ACC (the smallest such k on ties), then
  ACC (the headline) and AUC on test at that k. One search of 200 neighbours per query
  gives every k. The records carry `protocol: released`, the chosen `k`, `k_max` (the
  largest k tried) and `val_acc`; `ks`, `headline_k` and the majority vote are unused.

The paper's Table 3 numbers sit beside the `released` rows only: the records of the
`fixed` protocol carry no `paper_row` (they are not the paper's protocol), so the
leaderboard's paper column stays empty for them. The headline cell's scores are saved
to `<out>/medmnist/<task>__<dataset>__<encoder>.npz` (`scores`, `labels`, `k`) so that any
evaluator can be run on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from pydantic import Field, PositiveInt

from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.kinds import Task

from harness_plugins.tasks._memory import NeighbourVoteParams

KS = (1, 5, 10, 20, 100, 200)
RELEASED_MAX_K = 200
"""The released script's largest k (it tries every k from 1 to 200 on val)."""
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


def medmnist_acc(labels: np.ndarray, scores: np.ndarray, label_type: str, threshold: float = 0.5) -> float:
    """ACC as a fraction, the rule of `medmnist_metrics` in plain numpy (no AUC), for the
    sweep over k of the `released` protocol."""
    labels = np.asarray(labels)
    if label_type == "multi-label, binary-class":
        return float(np.mean([np.mean(labels[:, j] == (scores[:, j] > threshold)) for j in range(labels.shape[1])]))
    if label_type == "binary-class":
        positive = scores[:, -1] if scores.ndim == 2 else scores
        return float(np.mean(labels == (positive > threshold)))
    return float(np.mean(labels == np.argmax(scores, axis=-1)))


def scores_by_k(sims: np.ndarray, neighbour_labels: np.ndarray, temperature: float, num_classes: int) -> Iterator[np.ndarray]:
    """The normalised weighted-vote scores for k = 1, 2, ... up to the neighbours given
    (sims [q, K] best first; neighbour_labels [q, K] or [q, K, L]).

    The vote mass is accumulated neighbour by neighbour from 0.0, as `vote_mass` does,
    so the scores at k equal `normalised_scores(sims[:, :k], ...)` for single labels."""
    from harness.memory.voting import vote_weights

    weights = vote_weights(sims, "weighted", temperature)
    rows = np.arange(len(weights))
    multilabel = neighbour_labels.ndim == 3
    mass = np.zeros((len(weights), neighbour_labels.shape[2] if multilabel else num_classes), np.float64)
    total = np.zeros((len(weights), 1), np.float64)
    for column in range(weights.shape[1]):
        if multilabel:
            mass += weights[:, column, None] * neighbour_labels[:, column].astype(np.float64)
            total[:, 0] += weights[:, column]
            yield mass / total
        else:
            mass[rows, neighbour_labels[:, column]] += weights[:, column]
            yield mass / mass.sum(axis=1, keepdims=True)


def best_k_on_val(val_accs: np.ndarray) -> int:
    """The k (1-based) with the best validation ACC; the smallest such k on ties."""
    return int(np.argmax(val_accs)) + 1


class MedMNISTTask(Task):
    """MedMNIST ACC and AUC of the normalised kNN vote, as the medmnist Evaluator computes them."""

    class Params(NeighbourVoteParams):
        ks: list[PositiveInt] = Field(list(KS), min_length=1, description="fixed: numbers of neighbours k to report")
        protocol: Literal["fixed", "released"] = Field(
            "fixed",
            description="fixed: every k in ks and both votes, headline at headline_k; released: the paper's "
            "released script, weighted vote at the k in 1..200 with the best validation ACC (Table 3's numbers)",
        )

    params: Params
    default_datasets = PAPER_DATASETS
    title = "MedMNIST kNN classification (ACC %, Table 3)"

    @property
    def paper_comparable(self) -> bool:
        """Whether this instance's numbers answer the paper's (Table 3 used the released protocol)."""
        return self.params.protocol == "released"

    def run(self, encoder: Any, ctx: Any) -> list:
        from harness.memory import VisualMemory

        data = ctx.open_dataset()
        label_type = getattr(data, "label_type", "multi-class")
        train = ctx.embed_split(data.train, "train")
        train_labels = np.asarray(data.train.labels)
        memory = VisualMemory(train.shape[1], device=ctx.device)
        multilabel = train_labels.ndim == 2
        memory.add(train, np.zeros(len(train), np.int64) if multilabel else train_labels)
        if self.params.protocol == "released":
            return self._released(encoder, ctx, data, memory, train_labels, label_type)
        return self._fixed(encoder, ctx, data, memory, train_labels, label_type)

    def _fixed(self, encoder: Any, ctx: Any, data: Any, memory: Any, train_labels: np.ndarray, label_type: str) -> list:
        ks, temperature, headline_k = self.params.reported_ks, self.params.temperature, self.params.headline_k
        test = ctx.embed_split(data.test, "test")
        test_labels = np.asarray(data.test.labels)
        multilabel = train_labels.ndim == 2
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
                clipped = {"k_used": len(memory)} if k > len(memory) else {}
                records.append(ctx.result("acc", 100.0 * acc, n=len(test_labels), headline=is_headline, k=k, vote=vote, **clipped))
                if auc is not None:
                    records.append(ctx.result("auc", 100.0 * auc, n=len(test_labels), k=k, vote=vote, **clipped))
                if is_headline:
                    self._save_scores(ctx, encoder, scores, test_labels, min(k, len(memory)))
        return records

    def _released(self, encoder: Any, ctx: Any, data: Any, memory: Any, train_labels: np.ndarray, label_type: str) -> list:
        """The released script: the best k in 1..K on val (K = min(200, memory size)), then test at that k."""
        temperature = self.params.temperature
        if "val" not in data.splits:
            raise HarnessError(f"dataset {ctx.dataset!r} has no val split; the released protocol chooses k on it")
        widest = min(RELEASED_MAX_K, len(memory))

        def neighbours(split: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
            sims, ids = memory.search(ctx.embed_split(split, name), widest)
            return sims.astype(np.float64), (train_labels[ids] if train_labels.ndim == 2 else memory.labels_of(ids))

        val_labels = np.asarray(data.splits["val"].labels)
        val_sims, val_neighbours = neighbours(data.splits["val"], "val")
        val_accs = np.array([
            medmnist_acc(val_labels, scores, label_type)
            for scores in scores_by_k(val_sims, val_neighbours, temperature, data.num_classes)
        ])
        k = best_k_on_val(val_accs)
        test_labels = np.asarray(data.test.labels)
        test_sims, test_neighbours = neighbours(data.test, "test")
        scores = normalised_scores(test_sims[:, :k], test_neighbours[:, :k], "weighted", temperature, data.num_classes)
        acc, auc = medmnist_metrics(test_labels, scores, label_type)
        params = {"protocol": "released", "k": k, "vote": "weighted", "k_max": widest}
        records = [
            ctx.result("acc", 100.0 * acc, n=len(test_labels), headline=True, **params),
            ctx.result("val_acc", 100.0 * float(val_accs[k - 1]), n=len(val_labels), **params),
        ]
        if auc is not None:
            records.append(ctx.result("auc", 100.0 * auc, n=len(test_labels), **params))
        self._save_scores(ctx, encoder, scores, test_labels, k)
        return records

    def _save_scores(self, ctx: Any, encoder: Any, scores: np.ndarray, labels: np.ndarray, k: int) -> None:
        from harness.cache import save_arrays

        out = Path(ctx.run.out_dir) / "medmnist" / f"{self.name}__{ctx.dataset}__{encoder.name}.npz"
        save_arrays(out, scores=scores, labels=labels, k=np.int64(k), temperature=np.float64(self.params.temperature))

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
