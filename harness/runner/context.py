"""What a plugin gets from the runner: device, cache, registry, seed, and for a task
cell the dataset it runs on, a cached embedding helper and a Result builder."""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.version import __version__
from harness.cache import cache_root, cached_arrays, save_arrays
from harness.errors import HarnessError
from harness.keys import stable_hash
from harness.kinds import Encoder, Task

if TYPE_CHECKING:
    from harness.config.registry import Registry
    from harness.results.store import Result


@dataclass
class RunContext:
    registry: Registry
    device: str = "cpu"
    seed: int = 0
    out_dir: Path = Path("leaderboard")
    cache_dir: Path = field(default_factory=cache_root)
    progress: bool = True
    force: bool = False
    """Recompute cached embeddings (once per run) instead of loading them."""
    recomputed: set[Path] = field(default_factory=set)
    """Embedding files computed in this run: with `force`, each is recomputed only once."""
    limit: int | float | None = None
    """`--limit`: each split of a classification dataset cut to N images or a fraction
    (stratified, seeded by `seed`); part of every cell and embedding key."""
    dataset_descriptions: dict[str, Any] = field(default_factory=dict)
    """`Registry.dataset_description` per dataset, taken once per run: fingerprinting a
    large root lists all its files, which every cell key and embedded split would repeat."""

    def cache_path(self, *parts: str) -> Path:
        return self.cache_dir.joinpath(*parts)

    def dataset_description(self, name: str) -> dict[str, Any] | None:
        if name not in self.dataset_descriptions:
            self.dataset_descriptions[name] = self.registry.dataset_description(name)
        return self.dataset_descriptions[name]


@dataclass
class CellContext:
    """One cell of the cross product: (encoder, task, dataset)."""

    run: RunContext
    task: Task
    encoder: Encoder
    dataset: str
    cell_key: str
    started: float = field(default_factory=time.perf_counter)

    @property
    def registry(self) -> Registry:
        return self.run.registry

    @property
    def device(self) -> str:
        return self.run.device

    @property
    def seed(self) -> int:
        return self.run.seed

    def open_dataset(self, name: str | None = None) -> Any:
        from harness.datasets import open_dataset

        name = name or self.dataset
        data = open_dataset(name, self.registry.dataset(name), self.registry.plugins.readers())
        if self.run.limit is None:
            return data
        from harness.datasets.subsets import limit_dataset

        return limit_dataset(data, self.run.limit, self.run.seed)

    def embed_split(self, split: Any, split_name: str, batch_size: int = 256) -> np.ndarray:
        """Global features of every image of `split`, cached per (encoder, dataset, split).

        The key holds the dataset's description, fingerprint of its contents included, so
        changed images are embedded afresh; with `run.force` the cache is bypassed once."""
        data = self.run.dataset_description(self.dataset)
        subset = [] if self.run.limit is None else [{"limit": self.run.limit, "seed": self.run.seed}]
        key = stable_hash([self.encoder.key, self.dataset, data, split_name, len(split), *subset])
        path = self.run.cache_path("embeddings", self.encoder.name, f"{self.dataset}-{split_name}-{key}.npz")

        def compute() -> dict[str, np.ndarray]:
            from tqdm import tqdm

            chunks = []
            total = (len(split) + batch_size - 1) // batch_size
            desc = f"embed {self.encoder.name} {self.dataset}/{split_name}"
            for batch in tqdm(split.batches(batch_size), total=total, desc=desc, leave=False, disable=not self.run.progress):
                chunks.append(self.encoder.checked_features(self.encoder.embed(batch), len(batch)))
            widths = sorted({chunk.shape[1] for chunk in chunks})
            if len(widths) > 1:
                raise HarnessError(f"encoder {self.encoder.name!r}: embed returned features of {widths} dimensions for batches of {self.dataset}/{split_name}; every image needs the same d")
            return {"features": np.concatenate(chunks).astype(np.float32)}

        if self.run.force and path not in self.run.recomputed:
            self.run.recomputed.add(path)
            features = compute()
            save_arrays(path, **features)
            return features["features"]
        return cached_arrays(path, compute)["features"]

    def result(self, metric: str, value: float | None, n: int = 0, headline: bool = False, **params: Any) -> Result:
        from harness.config.schema import EncoderSpec
        from harness.results.store import Result

        spec = self.registry.spec("encoder", self.encoder.name)
        group = (spec.group if isinstance(spec, EncoderSpec) and spec.group else None) or self.encoder.group
        paper_row = spec.paper_row if isinstance(spec, EncoderSpec) and self.task.paper_comparable else None
        return Result(
            task=self.task.name,
            dataset=self.dataset,
            encoder=self.encoder.name,
            metric=metric,
            value=None if value is None else float(value),
            n=int(n),
            headline=headline,
            params=params,
            encoder_group=group,
            paper_row=paper_row,
            encoder_spec={
                "plugin": self.encoder.plugin_name,
                "params": dict(spec.params) if spec is not None else {},
                "architecture": self.encoder.architecture,
            },
            task_plugin=self.task.plugin_name,
            cell_key=self.cell_key,
            seconds=round(time.perf_counter() - self.started, 3),
            keys={
                "encoder": self.encoder.key,
                "task": self.task.key,
                "code_version": __version__,
                "seed": self.seed,
                "device": self.device,
                **({} if self.run.limit is None else {"limit": self.run.limit}),
            },
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
