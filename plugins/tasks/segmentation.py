"""Segmentation from patch features (the paper's Table 2 and Figures 8-10).

* `coco-r2` — zero-shot segmentation R^2 (`harness.metrics.segmentation_r2`) of each
  image's 3-component feature PCA against its human labels: COCO val2017, first 5000
  images at 448 x 448. Also draws the feature-PCA figure (Figures 8 and 11): a few
  fixed photographs (scikit-image's astronaut, coffee, chelsea) and the dataset's
  first images, every encoder side by side.
* `knn-seg` — kNN segmentation on Pascal VOC 2012: the patch features and patch
  labels of 512 random train images form the memory; each val patch takes the
  weighted vote of memory patches: by default (`attention: topk`) softmax over its
  30 most cosine-similar memory patches at temperature 0.02 (Hummingbird's
  retrieval), or (`attention: released`) softmax(q . k^T / sqrt(C)) over all of them,
  as the released notebook. Pixel accuracy, foreground accuracy and mIoU at the patch
  grid.
* `incontext-seg` — in-context segmentation on ADE20k: for drawn (prompt, query)
  pairs sharing a class, the query's mask is the prompt's class mask transferred by
  attention softmax(q . k^T / C); IoU at 0.5 and soft IoU.

All three read any `SegmentationData` dataset, so they also run on the procedural
`synthetic-scenes` (no download). See docs/segmentation.md for the exact protocols.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, NonNegativeInt, PositiveInt

from harness.datasets.segmentation import SegmentationData
from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.keys import stable_hash
from harness.kinds import Task
from harness.metrics import SEGMENTATION_SIZE

PHOTOGRAPHS = ("astronaut", "coffee", "chelsea")


def _percent(x: float) -> float:
    return 100.0 * x if np.isfinite(x) else float("nan")


class SegmentationTask(Task):
    """Shared plumbing: the dataset, its input size, batches of patch features."""

    class Params(Task.Params):
        image_size: PositiveInt | None = Field(None, description="side the images are resized to for the encoder (default: the dataset's)")
        batch_size: PositiveInt = Field(32, description="images per embedding batch")

    params: Params
    needs_patches = True

    def data(self, ctx: Any) -> SegmentationData:
        data = ctx.open_dataset()
        if not isinstance(data, SegmentationData):
            spec = ctx.registry.dataset(ctx.dataset)
            raise HarnessError(
                f"task {self.name!r} needs a segmentation dataset (formats coco, voc, ade20k, synthetic-scenes); "
                f"dataset {ctx.dataset!r} has format {spec.format!r}"
            )
        return data

    def image_size(self, data: SegmentationData) -> int | None:
        return self.params.image_size or data.image_size

    @property
    def batch_size(self) -> int:
        return self.params.batch_size

    def progress(self, ctx: Any, total: int, desc: str) -> Any:
        from tqdm import tqdm

        return tqdm(total=total, desc=f"{desc} {ctx.encoder.name} {ctx.dataset}", leave=False, disable=not ctx.run.progress)


# ---------------------------------------------------------------------------- coco-r2
class CocoR2Task(SegmentationTask):
    """Zero-shot segmentation R^2 of each image's feature PCA against its human labels."""

    class Params(SegmentationTask.Params):
        n_images: PositiveInt = Field(5000, description="the split's first images to score")
        split: str = Field("val", description="dataset split to score")
        size: PositiveInt = Field(SEGMENTATION_SIZE, description="side at which R^2 compares features and labels")
        figure_images: NonNegativeInt = Field(2, description="dataset images shown in the feature-PCA figure")
        photographs: list[Literal["astronaut", "camera", "chelsea", "coffee", "rocket"]] = Field(
            list(PHOTOGRAPHS), description="scikit-image photographs shown first in the feature-PCA figure"
        )

    params: Params
    default_datasets = ("coco",)
    title = "Zero-shot segmentation R^2 of feature PCA vs human labels (%, Table 2)"

    def run(self, encoder: Any, ctx: Any) -> list:
        from harness.metrics import segmentation_inertia
        from harness.results.paths import FIGURES
        from harness_plugins.tasks._seg_ops import embed_patches, photographs, write_pca_parts
        from harness.datasets.segmentation import resize_image

        data = self.data(ctx)
        split = data.split(self.params.split)
        count = min(self.params.n_images, len(split))
        size = self.params.size
        image_size = self.image_size(data)
        means = ("scalar", "per_component")
        inertia = np.empty((count, len(means)))
        figure_items: list[tuple[str, np.ndarray, np.ndarray | None]] = []
        figure_feats: list[Any] = []
        n_figure = self.params.figure_images
        bar = self.progress(ctx, count, "r2")
        for start in range(0, count, self.batch_size):
            indices = list(range(start, min(start + self.batch_size, count)))
            images, labels = split.batch(indices, image_size, size)
            feats = embed_patches(encoder, images)
            inertia[indices] = segmentation_inertia(feats, labels, size=size, mean=means, device=ctx.device)
            for j, index in enumerate(indices):
                if index < n_figure:
                    figure_items.append((f"{data.name}-{index}", images[j].numpy(), labels[j]))
                    figure_feats.append(feats[j])
            bar.update(len(indices))
        bar.close()
        # the feature-PCA figure: fixed photographs, then the dataset's first images
        photos = photographs(self.params.photographs)
        if photos:
            import torch

            side = image_size or split.load(0, None, None)[0].shape[-1]
            batch = torch.from_numpy(np.stack([resize_image(photo, side, "bilinear-aa") for _, photo in photos]))
            feats = embed_patches(encoder, batch)
            figure_items = [(name, batch[i].numpy(), None) for i, (name, _) in enumerate(photos)] + figure_items
            figure_feats = list(feats) + figure_feats
        if figure_items:
            write_pca_parts(ctx.run.out_dir / FIGURES, self.name, ctx.dataset, encoder.name, figure_items, figure_feats, size)
        records = []
        for j, mean in enumerate(means):
            values = inertia[:, j]
            valid = values[~np.isnan(values)]
            r2 = 1.0 - float(valid.mean()) if len(valid) else float("nan")
            records.append(ctx.result(
                "r2", _percent(r2), n=len(valid), headline=(mean == "scalar"), mean=mean, images=count,
                nan_images=int(np.isnan(values).sum()), size=size, image_size=image_size,
            ))
        return records

    @classmethod
    def paper_numbers(cls) -> Any:
        from harness_plugins.tasks._paper import paper_numbers

        return paper_numbers("coco-r2")

    @classmethod
    def figures(cls, results: Any, out_dir: Path) -> list[Path]:
        """Feature PCAs (3 components as RGB), every encoder side by side (Figures 8, 11)."""
        from harness_plugins.tasks._seg_ops import compose_pca_grid, encoder_order, pca_dir

        ok = results[results.status == "ok"]
        paths = []
        for (task, dataset), rows in ok.groupby(["task", "dataset"]):
            path = compose_pca_grid(
                pca_dir(out_dir, task, dataset), encoder_order(rows), out_dir / f"{task}_{dataset}_pca.png",
                title=f"{task}: feature PCA (3 components as RGB), {dataset}",
            )
            if path is not None:
                paths.append(path)
        return paths


# ---------------------------------------------------------------------------- knn-seg
class KnnSegTask(SegmentationTask):
    """kNN segmentation: each val patch takes the attention-weighted vote of a memory of patch labels
    (`attention`: `topk`, the headline, or `released`; see `_seg_attention`)."""

    class Params(SegmentationTask.Params):
        memory_images: PositiveInt = Field(512, description="train images drawn (seed) into the memory")
        seed: NonNegativeInt = Field(0, description="seed of the draw of memory images")
        queries: PositiveInt | None = Field(None, description="first val images to segment (default: all)")
        train_split: str = Field("train", description="split the memory is drawn from")
        val_split: str = Field("val", description="split of the query images")
        query_chunk: PositiveInt = Field(1024, description="query patches per attention block (bounds memory use)")
        key_chunk: PositiveInt = Field(65536, description="memory patches per attention block (bounds memory use)")
        attention: Literal["released", "topk"] = Field(
            "topk",
            description="label transfer: topk = softmax(cosine / temperature) over the k nearest memory patches "
            "(Hummingbird; discriminates at any feature scale); released = softmax(q . k^T / sqrt(C)) over all "
            "memory patches, as the released notebook (nearly uniform for features of small norm)",
        )
        k: PositiveInt = Field(30, description="topk: nearest memory patches (cosine similarity) each query patch votes over")
        temperature: float = Field(0.02, gt=0, description="topk: softmax temperature over the k cosine similarities")

    params: Params
    default_datasets = ("voc2012",)
    title = "kNN segmentation: attention over a memory of patch labels (%, Figure 10)"

    def run(self, encoder: Any, ctx: Any) -> list:
        import torch

        from harness.datasets.segmentation import resize_labels
        from harness_plugins.tasks._seg_attention import knn_label_transfer
        from harness_plugins.tasks._seg_ops import confusion_matrix, embed_patches, segmentation_scores

        data = self.data(ctx)
        train = data.split(self.params.train_split)
        val = data.split(self.params.val_split)
        image_size = self.image_size(data)
        seed = self.params.seed
        n_memory = min(self.params.memory_images, len(train))
        memory_ids = np.sort(np.random.default_rng(seed).choice(len(train), size=n_memory, replace=False))
        n_queries = min(self.params.queries or len(val), len(val))
        num_classes = data.num_classes

        def patch_batches(split: Any, indices: Any, desc: str) -> Any:
            bar = self.progress(ctx, len(indices), desc)
            for start in range(0, len(indices), self.batch_size):
                chunk = [int(i) for i in indices[start : start + self.batch_size]]
                images, native = split.batch(chunk, image_size, None)
                feats = embed_patches(encoder, images)
                labels = np.stack([resize_labels(x, tuple(feats.shape[1:3]), split.label_mode) for x in native])
                yield feats, self.clean(labels, data)
                bar.update(len(chunk))
            bar.close()

        keys, values = [], []
        for feats, labels in patch_batches(train, memory_ids, "memory"):
            keys.append(feats.reshape(-1, feats.shape[-1]))
            values.append(labels.reshape(-1))
        keys_t = torch.cat(keys).to(ctx.device)  # moved once: every query block attends to all of it
        onehot = torch.nn.functional.one_hot(torch.from_numpy(np.concatenate(values)), num_classes).float().to(ctx.device)
        attention = self.params.attention
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        for feats, labels in patch_batches(val, np.arange(n_queries), "queries"):
            soft = knn_label_transfer(
                attention, feats.reshape(-1, feats.shape[-1]), keys_t, onehot,
                k=self.params.k, temperature=self.params.temperature,
                query_chunk=self.params.query_chunk, key_chunk=self.params.key_chunk, device=ctx.device,
            )
            predicted = soft.argmax(dim=1).numpy()
            confusion += confusion_matrix(labels.reshape(-1), predicted, num_classes)
        scores = segmentation_scores(confusion)
        extra = {"memory_images": n_memory, "memory_patches": int(keys_t.shape[0]), "queries": n_queries, "seed": seed,
                 "attention": attention}
        if attention == "topk":
            extra.update(k=min(self.params.k, int(keys_t.shape[0])), temperature=self.params.temperature)
        return [ctx.result(metric, value, n=n_queries, headline=True, **extra) for metric, value in scores.items()]

    @staticmethod
    def clean(labels: np.ndarray, data: SegmentationData) -> np.ndarray:
        """Patch labels with the ignore label (VOC's 255 boundary) as background, as the
        released code does; labels outside the class list are an error."""
        labels = labels.copy()
        if data.ignore_index is not None:
            labels[labels == data.ignore_index] = 0
        if labels.size and (labels.max() >= data.num_classes or labels.min() < 0):
            raise HarnessError(f"dataset {data.name!r}: label {int(labels.max())} outside its {data.num_classes} classes")
        return labels


# ----------------------------------------------------------------------- incontext-seg
def draw_pairs(
    split: Any, count: int, seed: int, min_fraction: float, exclude: tuple[int, ...], progress: Any = None
) -> list[tuple[int, int, int]]:
    """(class, prompt index, query index) pairs, reproducible from `seed`.

    A class counts as present in an image when it covers at least `min_fraction` of
    its pixels (native label map). Each pair draws a class uniformly among the classes
    present in at least two images, then two distinct such images: prompt and query.
    """
    present: dict[int, list[int]] = {}
    for index in range(len(split)):
        labels = split.read_labels(index)
        values, counts = np.unique(labels, return_counts=True)
        for value, n in zip(values.tolist(), counts.tolist()):
            if value not in exclude and n >= min_fraction * labels.size:
                present.setdefault(int(value), []).append(index)
        if progress is not None:
            progress.update(1)
    classes = sorted(c for c, images in present.items() if len(images) >= 2)
    if not classes:
        raise HarnessError(f"{split.name}: no class covers {min_fraction:.0%} of two or more images; lower min_fraction")
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        cls = classes[int(rng.integers(len(classes)))]
        prompt, query = rng.choice(present[cls], size=2, replace=False)
        pairs.append((cls, int(prompt), int(query)))
    return pairs


class InContextSegTask(SegmentationTask):
    """In-context segmentation: a prompt image's class mask transferred to a query by attention."""

    class Params(SegmentationTask.Params):
        pairs: PositiveInt = Field(500, description="(prompt, query) pairs drawn")
        seed: NonNegativeInt = Field(0, description="seed of the draw of pairs")
        split: str = Field("val", description="dataset split the pairs are drawn from")
        min_fraction: float = Field(0.05, gt=0, le=1, description="a class is present in an image covering at least this fraction")
        exclude: list[int] = Field([0], description="classes never drawn (ADE's 0: other / background)")
        eval_size: PositiveInt = Field(SEGMENTATION_SIZE, description="side at which the transferred mask is scored")
        threshold: float = Field(0.5, ge=0, le=1, description="soft mask level above which a pixel counts for IoU")

    params: Params
    default_datasets = ("ade20k",)
    title = "In-context segmentation: prompt mask transferred by attention (%, Figure 9)"

    def pairs(self, ctx: Any, split: Any, data: SegmentationData) -> list[tuple[int, int, int]]:
        from harness.cache import cached_arrays

        count, seed, min_fraction = self.params.pairs, self.params.seed, self.params.min_fraction
        exclude = tuple(self.params.exclude) + ((data.ignore_index,) if data.ignore_index is not None else ())
        spec = ctx.registry.dataset(ctx.dataset).model_dump()
        key = stable_hash([ctx.dataset, spec, split.name, len(split), count, seed, min_fraction, exclude])
        path = ctx.run.cache_path("segmentation", f"pairs-{ctx.dataset}-{key}.npz")

        def compute() -> dict[str, np.ndarray]:
            bar = self.progress(ctx, len(split), "pairs")
            pairs = draw_pairs(split, count, seed, min_fraction, exclude, bar)
            bar.close()
            return {"pairs": np.asarray(pairs, dtype=np.int64).reshape(-1, 3)}

        return [tuple(int(v) for v in row) for row in cached_arrays(path, compute)["pairs"]]

    def run(self, encoder: Any, ctx: Any) -> list:
        import torch
        import torch.nn.functional as F

        from harness.datasets.segmentation import resize_labels
        from harness_plugins.tasks._seg_ops import attention_transfer, binary_ious, embed_patches

        data = self.data(ctx)
        split = data.split(self.params.split)
        pairs = self.pairs(ctx, split, data)
        image_size = self.image_size(data)
        eval_size, threshold = self.params.eval_size, self.params.threshold
        needed = sorted({i for _, p, q in pairs for i in (p, q)})
        feats: dict[int, torch.Tensor] = {}
        labels: dict[int, np.ndarray] = {}
        bar = self.progress(ctx, len(needed), "embed")
        for start in range(0, len(needed), self.batch_size):
            chunk = needed[start : start + self.batch_size]
            images, native = split.batch(chunk, image_size, None)
            out = embed_patches(encoder, images)
            for j, index in enumerate(chunk):
                feats[index] = out[j]
                labels[index] = native[j]
            bar.update(len(chunk))
        bar.close()
        ious, soft_ious = [], []
        for cls, prompt, query in pairs:
            key, q = feats[prompt], feats[query]
            h, w, c = key.shape
            # the prompt's class mask at the patch grid: the fraction of each patch it covers
            side = image_size or tuple(labels[prompt].shape)
            mask = (resize_labels(labels[prompt], side, split.label_mode) == cls).astype(np.float32)
            grid = F.interpolate(torch.from_numpy(mask)[None, None], size=(h, w), mode="area")[0, 0]
            soft = attention_transfer(
                q.reshape(-1, c), key.reshape(-1, c), grid.reshape(-1, 1), float(c), device=ctx.device, dtype=torch.float64
            )
            soft_map = F.interpolate(soft.reshape(1, 1, q.shape[0], q.shape[1]).double(), size=(eval_size, eval_size),
                                     mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
            truth = resize_labels(labels[query], eval_size, split.label_mode) == cls
            iou, soft_iou = binary_ious(soft_map, truth, threshold)
            ious.append(iou)
            soft_ious.append(soft_iou)
        extra = {"pairs": len(pairs), "eval_size": eval_size, "seed": self.params.seed}
        records = []
        for metric, values in (("iou50", np.asarray(ious)), ("soft_iou", np.asarray(soft_ious))):
            valid = values[~np.isnan(values)]
            value = 100.0 * float(valid.mean()) if len(valid) else float("nan")
            params = {**extra, "threshold": threshold} if metric == "iou50" else extra
            records.append(ctx.result(metric, value, n=len(valid), headline=True, **params))
        return records


@hookimpl
def register_tasks(register: Any) -> None:
    register("coco-r2", CocoR2Task)
    register("knn-seg", KnnSegTask)
    register("incontext-seg", InContextSegTask)
