"""Shared pieces of the segmentation tasks: blocked attention, segmentation scores,
patch embedding, and the feature-PCA images the figures are composed from."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

PCA_DIR = "pca"  # under <out>/figures: per-task, per-dataset, per-encoder PCA images


# ---------------------------------------------------------------------------- attention
def attention_transfer(
    queries: Any,
    keys: Any,
    values: Any,
    scale: float,
    query_chunk: int = 1024,
    key_chunk: int = 65536,
    device: str = "cpu",
    dtype: Any = None,
) -> torch.Tensor:
    """softmax(queries . keys^T / scale) @ values, without the [q, m] matrix.

    queries [q, C], keys [m, C], values [m, L] -> [q, L] (on the CPU). Keys are
    visited in blocks of `key_chunk` with a running maximum and normaliser (the
    streaming softmax of flash attention), queries in blocks of `query_chunk`, so
    memory stays at query_chunk x key_chunk scores whatever m is. Exact up to
    floating-point rounding.
    """
    import torch

    dtype = dtype or torch.float32
    q_all = torch.as_tensor(queries).to(device=device, dtype=dtype)
    k_all = torch.as_tensor(keys).to(device=device, dtype=dtype)
    v_all = torch.as_tensor(values).to(device=device, dtype=dtype)
    if k_all.shape[0] != v_all.shape[0]:
        raise ValueError(f"attention_transfer: {k_all.shape[0]} keys but {v_all.shape[0]} values")
    if q_all.shape[1] != k_all.shape[1]:
        raise ValueError(f"attention_transfer: queries have {q_all.shape[1]} channels, keys {k_all.shape[1]}")
    out = []
    with torch.inference_mode():
        for qs in range(0, q_all.shape[0], query_chunk):
            q = q_all[qs : qs + query_chunk] / scale
            running_max = torch.full((q.shape[0], 1), -math.inf, device=device, dtype=dtype)
            normaliser = torch.zeros(q.shape[0], 1, device=device, dtype=dtype)
            acc = torch.zeros(q.shape[0], v_all.shape[1], device=device, dtype=dtype)
            for ks in range(0, k_all.shape[0], key_chunk):
                scores = q @ k_all[ks : ks + key_chunk].T
                new_max = torch.maximum(running_max, scores.max(dim=1, keepdim=True).values)
                correction = torch.exp(running_max - new_max)
                weights = torch.exp(scores - new_max)
                normaliser = normaliser * correction + weights.sum(dim=1, keepdim=True)
                acc = acc * correction + weights @ v_all[ks : ks + key_chunk]
                running_max = new_max
            out.append((acc / normaliser).cpu())
    return torch.cat(out) if out else torch.zeros(0, v_all.shape[1], dtype=dtype)


# ------------------------------------------------------------------------------ scores
def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """[num_classes, num_classes] counts, rows = truth, columns = prediction."""
    truth = np.asarray(truth, dtype=np.int64).reshape(-1)
    predicted = np.asarray(predicted, dtype=np.int64).reshape(-1)
    return np.bincount(truth * num_classes + predicted, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(confusion: np.ndarray, background: int = 0) -> dict[str, float]:
    """Pixel accuracy, foreground accuracy (pixels whose true class is not `background`)
    and mIoU (mean over classes that occur in the truth or the prediction), in percent."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    correct = np.diag(confusion)
    foreground = np.ones(len(confusion), dtype=bool)
    foreground[background] = False
    fg_total = confusion[foreground].sum()
    union = confusion.sum(0) + confusion.sum(1) - correct
    present = union > 0
    return {
        "pixel_acc": 100.0 * correct.sum() / total if total else float("nan"),
        "fg_acc": 100.0 * correct[foreground].sum() / fg_total if fg_total else float("nan"),
        "miou": 100.0 * float(np.mean(correct[present] / union[present])) if present.any() else float("nan"),
    }


def binary_ious(soft: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> tuple[float, float]:
    """IoU of (soft >= threshold) with the binary truth, and the soft IoU
    sum(p g) / sum(p + g - p g); NaN where the union is empty."""
    p = np.asarray(soft, dtype=np.float64).reshape(-1)
    g = np.asarray(truth, dtype=np.float64).reshape(-1)
    hard = p >= threshold
    union = np.logical_or(hard, g > 0).sum()
    iou = float(np.logical_and(hard, g > 0).sum() / union) if union else float("nan")
    soft_union = (p + g - p * g).sum()
    soft_iou = float((p * g).sum() / soft_union) if soft_union > 0 else float("nan")
    return iou, soft_iou


# ---------------------------------------------------------------------------- features
def embed_patches(encoder: Any, images: torch.Tensor) -> torch.Tensor:
    """The encoder's patch features as float32 [n, h, w, d] on the CPU."""
    feats = encoder.embed_patches(images)
    if feats.ndim != 4 or feats.shape[0] != images.shape[0]:
        from harness.errors import HarnessError

        raise HarnessError(f"encoder {encoder.name!r}: embed_patches must return [n, h, w, d], got {list(feats.shape)}")
    return feats.float().cpu()


# ----------------------------------------------------------------------- PCA figures
def photographs(names: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """scikit-image's bundled photographs by name, as uint8 [H, W, 3]."""
    import skimage.data

    out = []
    for name in names:
        photo = np.asarray(getattr(skimage.data, name)())
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        out.append((name, np.ascontiguousarray(photo[..., :3]).astype(np.uint8)))
    return out


def label_colours(labels: np.ndarray) -> np.ndarray:
    """A label map as uint8 RGB, one fixed colour per label (0 black)."""
    rng = np.random.default_rng(12345)
    palette = rng.integers(40, 256, size=(max(256, int(labels.max(initial=0)) + 1), 3)).astype(np.uint8)
    palette[0] = 0
    return palette[np.asarray(labels, dtype=np.int64)]


def save_png(path: Path, rgb: np.ndarray) -> Path:
    """uint8 (or [0, 1] float) [H, W, 3] -> PNG, written atomically."""
    from PIL import Image

    from harness.cache import atomic_write

    array = np.asarray(rgb)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def pca_dir(out_dir: Path, task: str, dataset: str) -> Path:
    return Path(out_dir) / PCA_DIR / task / dataset


def write_pca_parts(
    out_dir: Path,
    task: str,
    dataset: str,
    encoder: str,
    items: Sequence[tuple[str, np.ndarray, np.ndarray | None]],
    features: Any,
    size: int,
    device: str = "cpu",
) -> None:
    """Store, for each item (key, image uint8 [3, S, S], labels or None), the input image,
    its colour-coded labels and this encoder's 3-component feature PCA as PNGs under
    <out_dir>/pca/<task>/<dataset>/ for `compose_pca_grid`."""
    from harness.metrics import feature_pca

    base = pca_dir(out_dir, task, dataset)
    maps = feature_pca(features, size=size, device=device)
    for (key, image, labels), pca in zip(items, maps):
        save_png(base / "_input" / f"{key}.png", np.asarray(image).transpose(1, 2, 0))
        if labels is not None:
            save_png(base / "_labels" / f"{key}.png", label_colours(labels))
        save_png(base / encoder / f"{key}.png", pca)


def encoder_order(results: Any) -> list[str]:
    """Encoders of a result frame in the leaderboard's order (group, then name)."""
    from harness.config.schema import GROUPS

    rank = {g: i for i, g in enumerate(GROUPS)}
    table = results[["encoder", "encoder_group"]].drop_duplicates("encoder", keep="last")
    table = table.assign(rank=table.encoder_group.map(lambda g: rank.get(g, len(rank))))
    return list(table.sort_values(["rank", "encoder"]).encoder)


def compose_pca_grid(base: Path, encoders: Sequence[str], path: Path, title: str = "", keys: Sequence[str] | None = None) -> Path | None:
    """One PNG: a row per input image (image, labels when known, then each encoder's
    feature PCA as RGB). None when no part was stored."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    inputs = base / "_input"
    if not inputs.is_dir():
        return None
    keys = list(keys) if keys is not None else sorted(p.stem for p in inputs.glob("*.png"))
    keys = [k for k in keys if (inputs / f"{k}.png").is_file()]
    encoders = [e for e in encoders if any((base / e / f"{k}.png").is_file() for k in keys)]
    if not keys or not encoders:
        return None
    has_labels = any((base / "_labels" / f"{k}.png").is_file() for k in keys)
    columns = ["image"] + (["labels"] if has_labels else []) + list(encoders)
    fig, axes = plt.subplots(len(keys), len(columns), figsize=(1.9 * len(columns), 1.9 * len(keys) + 0.4), squeeze=False)
    for row, key in enumerate(keys):
        cells = [inputs / f"{key}.png"] + ([base / "_labels" / f"{key}.png"] if has_labels else [])
        cells += [base / e / f"{key}.png" for e in encoders]
        for col, cell in enumerate(cells):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if cell.is_file():
                with Image.open(cell) as im:
                    ax.imshow(np.asarray(im.convert("RGB")), interpolation="nearest")
            if row == 0:
                ax.set_title(columns[col], fontsize=8)
            if col == 0:
                ax.set_ylabel(key, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
