"""Saved visual memories and id files: building, unlearning and auditing them.

Behind `harness memory build|remove|audit` (`harness.memory.cli`):

  * `build_memory`: embed one split of a dataset with an encoder and save the memory,
    with its provenance (encoder, dataset, split) in the file;
  * `remove_ids`: exact unlearning of the ids listed in a file (one integer per line);
  * `audit`: the memory rows whose removal changes at least one query's prediction
    (the paper's non-private samples, section 6), by `VisualMemory.privacy_report`;
  * `verify_unlearning`: every answer after removal equals that of a memory rebuilt
    without those ids, with the time to unlearn beside the time to rebuild.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.errors import HarnessError
from harness.memory.index import VisualMemory

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


def read_ids(ids_file: str | Path) -> np.ndarray:
    """Integers, one per line; blank lines and `#` comments are ignored."""
    path = Path(ids_file)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise HarnessError(f"{path}: no such ids file") from None
    ids = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            ids.append(int(text))
        except ValueError:
            raise HarnessError(f"{path}:{number}: expected one integer id per line, got {line.strip()!r}") from None
    return np.asarray(ids, dtype=np.int64)


def write_ids(path: str | Path, ids: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{int(i)}\n" for i in ids))
    return path


def remove_ids(memory_path: str | Path, ids_file: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Remove the ids listed in `ids_file` and save the reduced memory to `out_path`.

    Reports how many rows were removed, which requested ids were not in the memory,
    and the time to unlearn (the removal itself, and including re-indexing)."""
    memory = VisualMemory.load(memory_path, device="cpu")
    requested = np.unique(read_ids(ids_file))
    missing = np.setdiff1d(requested, memory.ids)
    before = len(memory)
    start = time.perf_counter()
    removed = memory.remove(requested)
    removal_seconds = time.perf_counter() - start
    memory.build_index()  # what the next search would do
    unlearn_seconds = time.perf_counter() - start
    memory.metadata = {**memory.metadata}
    entry = {"when": _now(), "removed": removed, "ids_file": Path(ids_file).name}
    memory.metadata["unlearned"] = [*memory.metadata.get("unlearned", []), entry]
    path = memory.save(Path(out_path))
    return {
        "path": str(path),
        "requested": len(requested),
        "removed": removed,
        "missing": missing.tolist(),
        "rows_before": before,
        "rows_after": len(memory),
        "seconds_to_remove": removal_seconds,
        "seconds_to_unlearn": unlearn_seconds,
        "note": _note(memory.metadata.get("encoder_group")),
    }


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
        return np.asarray(queries, dtype=np.float32), None, f"{len(queries)} given queries"  # type: ignore[arg-type]
    path = Path(queries)
    if path.suffix in (".npy", ".npz"):
        if not path.is_file():
            raise HarnessError(f"{path}: no such query file")
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), None, str(path)
        with np.load(path, allow_pickle=False) as data:
            if "features" not in data.files:
                raise HarnessError(f"{path}: expected an array named 'features' (has {', '.join(data.files)})")
            labels = data["labels"] if "labels" in data.files else None
            return data["features"], labels, str(path)
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
    ids = read_ids(ids) if isinstance(ids, (str, Path)) else np.asarray(ids, dtype=np.int64).reshape(-1)
    features, _, described = load_queries(queries, original, registry, device)
    unlearned = VisualMemory.from_arrays(
        original.features, original.labels, original.ids, device=original.device, backend=original.backend
    )
    unlearned.build_index()  # a memory in use has its index built

    start = time.perf_counter()
    removed = unlearned.remove(ids)
    unlearned.build_index()
    unlearn_seconds = time.perf_counter() - start

    start = time.perf_counter()
    keep = ~np.isin(original.ids, ids)
    rebuilt = VisualMemory.from_arrays(
        original.features[keep], original.labels[keep], original.ids[keep], device=original.device, backend=original.backend
    )
    rebuilt.build_index()
    rebuild_seconds = time.perf_counter() - start

    if len(rebuilt) == 0:
        raise HarnessError("verify_unlearning: removing these ids empties the memory; nothing left to compare")
    used = min(int(k), len(rebuilt))
    sims_a, ids_a = unlearned.search(features, used)
    sims_b, ids_b = rebuilt.search(features, used)
    scores_a = unlearned.class_scores(features, used, vote, temperature)  # type: ignore[arg-type]
    scores_b = rebuilt.class_scores(features, used, vote, temperature)  # type: ignore[arg-type]
    pred_a = unlearned.classify(features, used, vote, temperature)  # type: ignore[arg-type]
    pred_b = rebuilt.classify(features, used, vote, temperature)  # type: ignore[arg-type]
    identical = (
        np.array_equal(ids_a, ids_b)
        and np.array_equal(sims_a, sims_b)
        and scores_a.shape == scores_b.shape
        and np.array_equal(scores_a, scores_b)
        and np.array_equal(pred_a, pred_b)
    )
    return {
        "queries": described,
        "num_queries": len(features),
        "removed": removed,
        "rows_after": len(unlearned),
        "identical": bool(identical),
        "differing_predictions": int((pred_a != pred_b).sum()),
        "seconds_to_unlearn": unlearn_seconds,
        "seconds_to_rebuild": rebuild_seconds,
        "note": _note(original.metadata.get("encoder_group")),
    }
