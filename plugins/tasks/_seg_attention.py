"""Label transfer for kNN segmentation: each query patch's class scores from a memory
of (patch feature, one-hot label) pairs.

Two variants, chosen by the `knn-seg` task's `attention` parameter:

* `released` — softmax(q . k^T / sqrt(C)) over *all* memory patches, raw features, as
  the paper's released notebook computes it (`_seg_ops.attention_transfer`). Its
  sharpness depends on the feature norm: features of small norm (`rgb`'s colours in
  [0, 1], C = 3) give nearly uniform weights, and the majority class wins everywhere.
* `topk` — the retrieval of Balazevic et al. 2023 ("Towards in-context scene
  understanding", Hummingbird): L2-normalised features, cosine similarity, only the
  k nearest memory patches of each query, softmax(similarity / temperature) over those
  k as weights of their labels. Independent of the feature scale.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

Attention = Literal["released", "topk"]


def topk_label_transfer(
    queries: Any,
    keys: Any,
    values: Any,
    k: int = 30,
    temperature: float = 0.02,
    query_chunk: int = 1024,
    key_chunk: int = 65536,
    device: str = "cpu",
    dtype: Any = None,
) -> torch.Tensor:
    """sum over the k most cosine-similar keys of softmax(cos / temperature) x value.

    queries [q, C], keys [m, C], values [m, L] -> [q, L] (on the CPU). Queries are
    visited in blocks of `query_chunk` and, within a block, keys in blocks of
    `key_chunk`, keeping a running top-k (`torch.topk` over the block's scores and the
    best k so far), so memory stays at query_chunk x (key_chunk + k) scores whatever m
    is. k larger than m uses all m keys. A zero feature has cosine 0 with everything.
    """
    import torch
    import torch.nn.functional as F

    dtype = dtype or torch.float32
    q_all = torch.as_tensor(queries).to(device=device, dtype=dtype)
    k_all = torch.as_tensor(keys).to(device=device, dtype=dtype)
    v_all = torch.as_tensor(values).to(device=device, dtype=dtype)
    if k_all.shape[0] != v_all.shape[0]:
        raise ValueError(f"topk_label_transfer: {k_all.shape[0]} keys but {v_all.shape[0]} values")
    if q_all.shape[1] != k_all.shape[1]:
        raise ValueError(f"topk_label_transfer: queries have {q_all.shape[1]} channels, keys {k_all.shape[1]}")
    if k < 1 or not temperature > 0:
        raise ValueError(f"topk_label_transfer: k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    if k_all.shape[0] == 0:
        raise ValueError("topk_label_transfer: the memory is empty")
    out = []
    with torch.inference_mode():
        for qs in range(0, q_all.shape[0], query_chunk):
            q = F.normalize(q_all[qs : qs + query_chunk], dim=1)
            best = torch.full((q.shape[0], 0), -math.inf, device=device, dtype=dtype)
            best_index = torch.zeros((q.shape[0], 0), device=device, dtype=torch.long)
            for ks in range(0, k_all.shape[0], key_chunk):
                scores = q @ F.normalize(k_all[ks : ks + key_chunk], dim=1).T
                top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
                merged = torch.cat([best, top.values], dim=1)
                merged_index = torch.cat([best_index, top.indices + ks], dim=1)
                keep = torch.topk(merged, min(k, merged.shape[1]), dim=1)
                best, best_index = keep.values, torch.gather(merged_index, 1, keep.indices)
            weights = torch.softmax(best / temperature, dim=1)
            out.append(torch.einsum("qk,qkl->ql", weights, v_all[best_index]).cpu())
    return torch.cat(out) if out else torch.zeros(0, v_all.shape[1], dtype=dtype)


def knn_label_transfer(
    attention: Attention,
    queries: Any,
    keys: Any,
    values: Any,
    *,
    k: int,
    temperature: float,
    query_chunk: int,
    key_chunk: int,
    device: str = "cpu",
) -> torch.Tensor:
    """Class scores [q, L] of query patches by the chosen variant (see the module docstring)."""
    from harness_plugins.tasks._seg_ops import attention_transfer

    if attention == "released":
        scale = float(math.sqrt(keys.shape[1]))
        return attention_transfer(queries, keys, values, scale, query_chunk=query_chunk, key_chunk=key_chunk, device=device)
    if attention == "topk":
        return topk_label_transfer(
            queries, keys, values, k=k, temperature=temperature, query_chunk=query_chunk, key_chunk=key_chunk, device=device
        )
    raise ValueError(f"unknown attention variant {attention!r}; use 'released' or 'topk'")
