"""NIGHTS two-alternative forced choice (the paper's Figure 4 and Table 5).

For each triplet (reference, left, right) the encoder gives the distances d0 = d(ref,
left) and d1 = d(ref, right): 1 - cosine similarity of `encoder.embed` features, or
`encoder.pairwise_distance(a, b)` when the encoder defines one (white-box metrics such
as PSNR and SSIM; lower = more similar). The per-triplet score is
(d0 < d1) * (1 - p) + (d1 < d0) * p + 0.5 * (d0 == d1) with p the fraction of humans
who chose the right image; the split's 2AFC is its mean (`harness.metrics.two_afc`).

Records, all with metric `2afc` (and `2afc_sem`, the standard error of the mean of the
per-triplet scores) and the param `split`:
  val               the paper's number (NIGHTS-Val, 1720 triplets): the headline;
  test_imagenet, test_no_imagenet, and test (their length-weighted total).
Per-triplet outcomes are written to `<out>/nights/<task>__<dataset>__<encoder>__<split>.csv`
(id, data.csv row, is_imagenet, p, d0, d1, score) for inspection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, PositiveInt

from harness.hookspecs import hookimpl
from harness.kinds import Task

SPLITS = ("val", "test_imagenet", "test_no_imagenet")
FIGURE_SPLITS = ("val", "test_imagenet", "test_no_imagenet", "test")
GROUP_COLOURS = {"target": "#4c72b0", "realistic": "#55a868", "procedural": "#dd8452", "white-box": "#8c8c8c"}


def triplet_scores(d0: np.ndarray, d1: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-triplet 2AFC agreement with the humans (its mean is `metrics.two_afc`)."""
    d0, d1, p = (np.asarray(x, dtype=np.float64) for x in (d0, d1, p))
    return (d0 < d1) * (1.0 - p) + (d1 < d0) * p + 0.5 * (d0 == d1)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of matching rows (float64)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return 1.0 - np.einsum("nd,nd->n", a, b)


def _sem(scores: np.ndarray) -> float:
    return float(scores.std(ddof=1) / np.sqrt(len(scores))) if len(scores) > 1 else float("nan")


class NightsTask(Task):
    """NIGHTS 2AFC: agreement of the encoder's distances with human similarity votes."""

    class Params(Task.Params):
        splits: list[Literal["val", "test_imagenet", "test_no_imagenet"]] = Field(
            list(SPLITS), min_length=1, description="NIGHTS splits to score (val is the headline)"
        )
        batch_size: PositiveInt = Field(64, description="images per embedding batch")

    params: Params
    default_datasets = ("nights",)
    title = "NIGHTS 2AFC (val; all splits in the figure)"

    def distances(self, encoder: Any, ctx: Any, triplets: Any) -> tuple[np.ndarray, np.ndarray]:
        """d0 = d(ref, left), d1 = d(ref, right) for every triplet of a split."""
        batch_size = self.params.batch_size
        pairwise = getattr(encoder, "pairwise_distance", None)
        if callable(pairwise):
            d0, d1 = [], []
            batches = zip(triplets.ref.batches(batch_size), triplets.left.batches(batch_size), triplets.right.batches(batch_size))
            for ref, left, right in batches:
                d0.append(np.asarray(pairwise(ref, left), dtype=np.float64).reshape(-1))
                d1.append(np.asarray(pairwise(ref, right), dtype=np.float64).reshape(-1))
            return np.concatenate(d0), np.concatenate(d1)
        name = triplets.name
        ref = ctx.embed_split(triplets.ref, f"{name}-ref", batch_size=batch_size)
        left = ctx.embed_split(triplets.left, f"{name}-left", batch_size=batch_size)
        right = ctx.embed_split(triplets.right, f"{name}-right", batch_size=batch_size)
        return cosine_distance(ref, left), cosine_distance(ref, right)

    def run(self, encoder: Any, ctx: Any) -> list:
        import pandas

        from harness.errors import HarnessError
        from harness.metrics import two_afc

        data = ctx.open_dataset()
        splits = self.params.splits
        missing = [s for s in splits if s not in getattr(data, "splits", {})]
        if missing:
            raise HarnessError(f"task {self.name!r}: dataset {ctx.dataset!r} has no NIGHTS split(s) {missing}; is its format nights?")
        out_dir = Path(ctx.run.out_dir) / "nights"
        out_dir.mkdir(parents=True, exist_ok=True)
        method = "pairwise_distance" if callable(getattr(encoder, "pairwise_distance", None)) else "1 - cosine(embed)"
        records = []
        per_split: dict[str, np.ndarray] = {}
        for split in splits:
            triplets = data.splits[split]
            if len(triplets) == 0:
                continue
            d0, d1 = self.distances(encoder, ctx, triplets)
            scores = triplet_scores(d0, d1, triplets.p)
            per_split[split] = scores
            pandas.DataFrame(
                {"id": triplets.ids, "csv_row": triplets.rows, "is_imagenet": triplets.is_imagenet,
                 "p": triplets.p, "d0": d0, "d1": d1, "score": scores}
            ).to_csv(out_dir / f"{self.name}__{ctx.dataset}__{encoder.name}__{split}.csv", index=False)
            value = two_afc(d0, d1, triplets.p)
            records.append(ctx.result("2afc", value, n=len(scores), headline=split == "val", split=split, distance=method))
            records.append(ctx.result("2afc_sem", _sem(scores), n=len(scores), split=split, distance=method))
        tests = [s for s in ("test_imagenet", "test_no_imagenet") if s in per_split]
        if tests:
            scores = np.concatenate([per_split[s] for s in tests])  # length-weighted total
            records.append(ctx.result("2afc", float(scores.mean()), n=len(scores), split="test", distance=method))
            records.append(ctx.result("2afc_sem", _sem(scores), n=len(scores), split="test", distance=method))
        if not records:
            raise HarnessError(f"dataset {ctx.dataset!r} has no triplets in the split(s) {splits} (after the votes filter)")
        return records

    @classmethod
    def paper_numbers(cls) -> Any:
        from harness_plugins.tasks._paper import paper_numbers

        return paper_numbers("nights")

    @classmethod
    def figures(cls, results: Any, out_dir: Path) -> list[Path]:
        """Like the paper's Figure 4: one bar per encoder (coloured by group) with the
        standard error of the mean, one panel per split; the paper's value as a mark."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ok = results[results.status == "ok"].copy()
        if ok.empty:
            return []
        ok["split"] = ok.params.map(lambda p: p.get("split"))
        values = ok[ok.metric == "2afc"]
        if values.empty:
            return []
        sems = ok[ok.metric == "2afc_sem"]
        splits = [s for s in FIGURE_SPLITS if s in set(values.split)]
        order = {g: i for i, g in enumerate(GROUP_COLOURS)}
        encoders = (
            values[["encoder", "encoder_group", "paper_row"]].drop_duplicates("encoder", keep="last")
            .assign(rank=lambda d: d.encoder_group.map(lambda g: order.get(g, len(order))))
            .sort_values(["rank", "encoder"])
        )
        paper = cls.paper_numbers()
        fig, axes = plt.subplots(1, len(splits), figsize=(max(3.2, 0.55 * len(encoders) + 1.6) * len(splits), 3.6), squeeze=False, sharey=True)
        lows: list[float] = []
        for ax, split in zip(axes[0], splits):
            heights, errors, colours = [], [], []
            for _, enc in encoders.iterrows():
                row = values[(values.encoder == enc.encoder) & (values.split == split)]
                err = sems[(sems.encoder == enc.encoder) & (sems.split == split)]
                heights.append(float(row.value.iloc[-1]) if not row.empty else np.nan)
                errors.append(float(err.value.iloc[-1]) if not err.empty and err.value.iloc[-1] is not None else 0.0)
                colours.append(GROUP_COLOURS.get(enc.encoder_group, "#8c8c8c"))
            x = np.arange(len(encoders))
            ax.bar(x, heights, yerr=errors, color=colours, capsize=3)
            if split == "val":
                for i, (_, enc) in enumerate(encoders.iterrows()):
                    match = paper[(paper.paper_row == enc.paper_row) & (paper.metric == "2afc")] if enc.paper_row else paper.iloc[0:0]
                    if not match.empty:
                        ax.plot(i, float(match.value.iloc[0]), marker="_", color="black", markersize=16, mew=2)
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
            ax.set_xticks(x, list(encoders.encoder), rotation=45, ha="right", fontsize=7)
            lows.append(np.nanmin(np.asarray(heights) - np.asarray(errors)) if np.isfinite(heights).any() else 0.5)
            ax.set_title(f"NIGHTS {split}" + (" (black: paper)" if split == "val" else ""))
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].set_ylim(max(0.0, min(0.4, np.floor(min(lows) * 10) / 10)), 1.0)
        axes[0][0].set_ylabel("2AFC agreement with humans")
        fig.tight_layout()
        path = out_dir / f"{results.task.iloc[0]}_2afc.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]


@hookimpl
def register_tasks(register: Any) -> None:
    register("nights", NightsTask)
