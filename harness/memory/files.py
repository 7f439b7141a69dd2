"""Saved visual memories and id files: building, unlearning and auditing them.

Behind `harness memory build|remove|audit` (`harness.memory.cli`):

  * `build_memory`: embed one split of a dataset with an encoder and save the memory,
    with its provenance (encoder, dataset, split) in the file;
  * `remove_ids`: exact unlearning of the ids listed in a file (one integer per line),
    optionally verified against the original rows before the reduced memory is written;
  * `audit`: the memory rows whose removal changes at least one query's prediction
    (the paper's non-private samples, section 6), by `VisualMemory.privacy_report`;
  * `verify_unlearning`: every answer after removal equals that of a memory rebuilt
    without those ids, with the time to unlearn beside the time to rebuild.

The ids, query and output files themselves are read and checked by
`harness.memory.user_files`.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.errors import HarnessError
from harness.memory.index import VisualMemory
from harness.memory.inputs import int64_values
from harness.memory.user_files import (
    cannot_write,
    output_file,
    read_ids,
    read_query_file,
    same_file,
    write_ids,
)

if TYPE_CHECKING:
    from harness.config.registry import Registry

NO_RETRAINING = {
    "procedural": (
        "The encoder was trained on procedural data only, so no real image ever reached its "
        "weights: all real data lives in the memory, and removing rows from the memory is "
        "complete unlearning, with no retraining."
    ),
    "white-box": (
        "The encoder has no weights learned from real images, so removing rows from the "
        "memory is complete unlearning, with no retraining."
    ),
    "real": (
        "The encoder's weights were trained on real images, which removal from the memory "
        "does not undo; only an encoder trained on procedural data (or a white-box one) "
        "keeps all real data in the memory."
    ),
}


def _registry(registry: Registry | str | Path | None) -> Registry:
    from harness.config.registry import Registry, active_registry, use_registry

    if isinstance(registry, Registry):
        return registry
    return use_registry(registry) if registry is not None else active_registry()


def _note(group: str | None) -> str:
    if group in ("procedural", "white-box"):
        return NO_RETRAINING[group]
    return NO_RETRAINING["real"]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _encoder_group(registry: Registry, encoder: Any) -> str:
    from harness.config.schema import EncoderSpec

    spec = registry.spec("encoder", encoder.name)
    return (spec.group if isinstance(spec, EncoderSpec) and spec.group else None) or encoder.group


def _split(data: Any, dataset_name: str, split: str) -> Any:
    found = {"train": data.train, "test": data.test, **(getattr(data, "splits", None) or {})}
    if split not in found:
        raise HarnessError(f"dataset {dataset_name!r} has no split {split!r}; it has {', '.join(sorted(found))}")
    return found[split]


def embed_dataset_split(
    encoder_name: str,
    dataset_name: str,
    split: str,
    registry: Registry | str | Path | None = None,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(features [n, d], labels [n], provenance) of one split, embedded by a prepared encoder.

    Embeddings are cached exactly as the tasks cache them, so a memory built after
    `harness run` reuses the run's embeddings."""
    from harness.device import default_device
    from harness.runner.context import CellContext, RunContext

    registry = _registry(registry)
    run = RunContext(registry=registry, device=device or default_device(), progress=False)
    encoder = registry.create("encoder", encoder_name)
    encoder.prepare(run)
    ctx = CellContext(run=run, task=None, encoder=encoder, dataset=dataset_name, cell_key="")  # type: ignore[arg-type]
    data = ctx.open_dataset()
    part = _split(data, dataset_name, split)
    labels = np.asarray(part.labels)
    if labels.ndim != 1:
        raise HarnessError(f"dataset {dataset_name!r} is multi-label; a visual memory holds one class per row")
    features = ctx.embed_split(part, split)
    provenance = {
        "encoder": encoder.name,
        "encoder_key": encoder.key,
        "encoder_group": _encoder_group(registry, encoder),
        "dataset": dataset_name,
        "split": split,
        "classes": list(map(str, getattr(data, "classes", []))),
    }
    return features, labels.astype(np.int64), provenance


def build_memory(
    encoder_name: str,
    dataset_name: str,
    split: str = "train",
    out_path: str | Path = "memory.npz",
    registry: Registry | str | Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Embed `dataset_name`'s `split` with `encoder_name` and save the memory to `out_path`.

    Row ids are the image indices within the split, so an ids file for `remove_ids` names
    images by their position in the dataset's split."""
    start = time.perf_counter()
    features, labels, provenance = embed_dataset_split(encoder_name, dataset_name, split, registry, device)
    memory = VisualMemory(features.shape[1], device="cpu")
    memory.add(features, labels)
    memory.metadata = {**provenance, "built": _now(), "unlearned": []}
    path = memory.save(Path(out_path))
    return {"path": str(path), "rows": len(memory), "dim": memory.dim, "seconds": time.perf_counter() - start, **provenance}


def remove_ids(
    memory_path: str | Path,
    ids_file: str | Path,
    out_path: str | Path,
    *,
    verify: bool = False,
    queries: object = None,
    k: int = 20,
    vote: str = "weighted",
    temperature: float = 0.07,
    registry: Registry | str | Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Remove the ids listed in `ids_file` and save the reduced memory to `out_path`.

    Reports how many rows were removed, which requested ids were not in the memory,
    and the time to unlearn (the removal itself, and including re-indexing).

    With `verify`, before anything is written, every answer of the reduced memory for
    `queries` (see `load_queries`) is compared with that of a memory rebuilt from the
    original rows without the ids (the result is under "verification"); when any answer
    differs nothing is written and "path" is None. `out_path` may be `memory_path` itself
    (or a symlink to it) only with `verify`: once the file is replaced, the original rows
    that a check needs are gone. A symlink is written through: its target file is replaced.
    A file with other hard links is refused as `out_path` of an in-place removal: the
    rename replaces one name, and the other names would keep every row."""
    if same_file(memory_path, out_path) and not verify:
        raise HarnessError(
            f"{out_path}: --out is the memory file being reduced, so its original rows would be gone before "
            "anything checked the removal; write to a new file, or add --verify to check before it is replaced"
        )
    if same_file(memory_path, out_path) and _has_other_hard_links(out_path):
        raise HarnessError(
            f"{out_path}: other names (hard links) link to this memory file, and replacing it under one name "
            "would leave them holding the rows being removed; delete the other links first "
            f"(`find / -samefile {out_path}` lists them), or write to a new file"
        )
    out_path = output_file(out_path, "--out")
    memory = VisualMemory.load(memory_path, device=device if verify else "cpu")
    requested = np.unique(read_ids(ids_file, memory))
    missing = np.setdiff1d(requested, memory.ids)
    loaded_queries = load_queries(queries, memory, registry, device) if verify else None
    original = (memory.features, memory.labels, memory.ids) if verify else None
    before = len(memory)
    start = time.perf_counter()
    removed = memory.remove(requested)
    removal_seconds = time.perf_counter() - start
    memory.build_index()  # what the next search would do
    unlearn_seconds = time.perf_counter() - start
    summary: dict[str, Any] = {
        "path": None,
        "requested": len(requested),
        "removed": removed,
        "missing": missing.tolist(),
        "rows_before": before,
        "rows_after": len(memory),
        "seconds_to_remove": removal_seconds,
        "seconds_to_unlearn": unlearn_seconds,
        "note": _note(memory.metadata.get("encoder_group")),
    }
    if loaded_queries is not None and original is not None:
        query_features, _, described = loaded_queries
        check = _compare_with_rebuild(memory, original, requested, query_features, k, vote, temperature)
        summary["verification"] = {"queries": described, **check, "seconds_to_unlearn": unlearn_seconds}
        if not check["identical"]:
            return summary
    memory.metadata = {**memory.metadata}
    entry = {"when": _now(), "removed": removed, "ids_file": Path(ids_file).name}
    memory.metadata["unlearned"] = [*memory.metadata.get("unlearned", []), entry]
    try:
        summary["path"] = str(memory.save(out_path))
    except OSError as exc:
        raise cannot_write(out_path, "the reduced memory", exc) from None
    return summary


def _has_other_hard_links(path: str | Path) -> bool:
    """Whether the file at `path` (after symlinks) has names other than this one."""
    try:
        return os.stat(path).st_nlink > 1
    except OSError:
        return False


def load_queries(
    queries: object,
    memory: VisualMemory,
    registry: Registry | str | Path | None = None,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Query features, their labels when known, and a description.

    `queries` is an array, a `.npy` file, an `.npz` file with a `features` array (and
    optionally `labels`), or the name of a split of the memory's own dataset, embedded
    with the memory's own encoder (default: its test split)."""
    if queries is None:
        queries = "test"
    if not isinstance(queries, (str, Path)):
        given = queries if hasattr(queries, "detach") else np.asarray(queries)  # the memory reads any float dtype
        return given, None, f"{len(given)} given queries"  # type: ignore[arg-type,return-value]
    path = Path(queries)
    if path.suffix in (".npy", ".npz"):
        if not path.is_file():
            raise HarnessError(f"{path}: no such query file")
        features, labels = read_query_file(path, memory.dim)
        return features, labels, str(path)
    meta = memory.metadata
    if not meta.get("encoder") or not meta.get("dataset"):
        raise HarnessError(
            f"queries {str(queries)!r}: the memory does not record its encoder and dataset "
            "(it was not made by `harness memory build`); give a .npy/.npz file of query features"
        )
    features, labels, _ = embed_dataset_split(meta["encoder"], meta["dataset"], str(queries), registry, device)
    return features, labels, f"{meta['dataset']}/{queries} embedded by {meta['encoder']}"


def audit(
    memory_path: str | Path | VisualMemory,
    queries: object = None,
    k: int = 20,
    vote: str = "weighted",
    temperature: float = 0.07,
    out_path: str | Path | None = None,
    registry: Registry | str | Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """The memory's non-private rows for `queries` (see `load_queries`), optionally written
    to `out_path` one id per line (a file `remove_ids` reads)."""
    out_path = None if out_path is None else output_file(out_path, "--out")
    memory = memory_path if isinstance(memory_path, VisualMemory) else VisualMemory.load(memory_path, device=device)
    features, labels, described = load_queries(queries, memory, registry, device)
    start = time.perf_counter()
    report = memory.privacy_report(features, k=k, vote=vote, temperature=temperature)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    summary: dict[str, Any] = {
        "queries": described,
        "num_queries": report.num_queries,
        "memory_size": report.memory_size,
        "k": k,
        **({"k_used": report.memory_size} if k > report.memory_size else {}),
        "vote": vote,
        "temperature": temperature,
        "non_private_count": report.count,
        "non_private_fraction": report.fraction,
        "changed_queries": report.changed_queries,
        "other_class_flips": report.other_class_flips,
        "seconds": seconds,
        "report": report,
    }
    if labels is not None:
        predictions = memory.classify(features, k=k, vote=vote, temperature=temperature)  # type: ignore[arg-type]
        summary["top1"] = 100.0 * float((predictions == np.asarray(labels).reshape(-1)).mean())
    if out_path is not None:
        summary["path"] = str(write_ids(out_path, report.ids))
    return summary


def verify_unlearning(
    memory: str | Path | VisualMemory,
    ids: object,
    queries: object = None,
    k: int = 20,
    vote: str = "weighted",
    temperature: float = 0.07,
    registry: Registry | str | Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Remove `ids` (an array or an ids file) from `memory` and check that every answer
    (neighbours, similarities, class scores, predictions) equals that of a memory rebuilt
    from scratch without them; report the time to unlearn and the time to rebuild.

    The rebuild starts from the stored embeddings of the remaining rows (re-embedding the
    images would give the same rows: encoders are deterministic and embeddings cached)."""
    original = memory if isinstance(memory, VisualMemory) else VisualMemory.load(memory, device=device)
    ids = read_ids(ids, original) if isinstance(ids, (str, Path)) else int64_values(ids, "verify_unlearning: ids").reshape(-1)
    features, _, described = load_queries(queries, original, registry, device)
    rows = (original.features, original.labels, original.ids)
    unlearned = VisualMemory.from_arrays(*rows, device=original.device, backend=original.backend)
    unlearned.build_index()  # a memory in use has its index built

    start = time.perf_counter()
    unlearned.remove(ids)
    unlearned.build_index()
    unlearn_seconds = time.perf_counter() - start
    check = _compare_with_rebuild(unlearned, rows, ids, features, k, vote, temperature)
    note = _note(original.metadata.get("encoder_group"))
    return {"queries": described, **check, "seconds_to_unlearn": unlearn_seconds, "note": note}


def _compare_with_rebuild(
    unlearned: VisualMemory,
    original: tuple[np.ndarray, np.ndarray, np.ndarray],
    ids: np.ndarray,
    queries: np.ndarray,
    k: int,
    vote: str,
    temperature: float,
) -> dict[str, Any]:
    """Compare every answer of `unlearned` with that of a memory rebuilt from the `original`
    (features, labels, ids) rows less `ids`, and time the rebuild."""
    features, labels, original_ids = original
    start = time.perf_counter()
    keep = ~np.isin(original_ids, ids)
    rebuilt = VisualMemory.from_arrays(
        features[keep], labels[keep], original_ids[keep], device=unlearned.device, backend=unlearned.backend
    )
    rebuilt.build_index()
    rebuild_seconds = time.perf_counter() - start

    if len(rebuilt) == 0:
        raise HarnessError("verify_unlearning: removing these ids empties the memory; nothing left to compare")
    used = min(int(k), len(rebuilt))
    sims_a, ids_a = unlearned.search(queries, used)
    sims_b, ids_b = rebuilt.search(queries, used)
    scores_a = unlearned.class_scores(queries, used, vote, temperature)  # type: ignore[arg-type]
    scores_b = rebuilt.class_scores(queries, used, vote, temperature)  # type: ignore[arg-type]
    pred_a = unlearned.classify(queries, used, vote, temperature)  # type: ignore[arg-type]
    pred_b = rebuilt.classify(queries, used, vote, temperature)  # type: ignore[arg-type]
    identical = (
        len(unlearned) == len(rebuilt)
        and np.array_equal(ids_a, ids_b)
        and np.array_equal(sims_a, sims_b)
        and scores_a.shape == scores_b.shape
        and np.array_equal(scores_a, scores_b)
        and np.array_equal(pred_a, pred_b)
    )
    removed = len(original_ids) - len(rebuilt)
    return {
        "num_queries": len(queries),
        "rows_before": len(original_ids),
        "removed": removed,
        "rows_after": len(unlearned),
        "rebuilt_from": f"{len(original_ids)} original rows less the {removed} removed",
        "identical": bool(identical),
        "differing_predictions": int((pred_a != pred_b).sum()),
        "seconds_to_rebuild": rebuild_seconds,
    }
