"""Result records and the append-only results.jsonl they live in.

One cell of the cross product (encoder x task x dataset) appends all its records in a
single write under an exclusive lock, followed by fsync, so a run killed at any point
leaves a file that is valid line by line and holds whole cells only.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

from pydantic import BaseModel, Field

from harness.cache import atomic_write
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.kinds import Encoder


class Result(BaseModel):
    task: str
    dataset: str
    encoder: str
    metric: str
    value: float | None = None
    n: int = 0
    status: Literal["ok", "skipped", "error"] = "ok"
    message: str = ""
    error_kind: Literal["input", "internal"] | None = Field(
        None, description="for errors: bad input (a HarnessError: file, key or plugin at fault) or a bug"
    )
    seconds: float = 0.0
    headline: bool = Field(False, description="the number the leaderboard's main table shows")
    params: dict[str, Any] = Field(default_factory=dict, description="variant of the metric, e.g. k and vote")
    encoder_group: str = "white-box"
    paper_row: str | None = None
    task_plugin: str = ""
    cell_key: str = Field("", description="hash of everything that determined this cell")
    keys: dict[str, Any] = Field(default_factory=dict, description="config hashes, code version, seed")
    created: str = ""


class ResultStore:
    """`<out>/results.jsonl`: append whole cells, read them back, know which are done."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "results.jsonl"

    def read(self) -> list[Result]:
        """Every record; a torn last line (from a crash mid-write) is ignored."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(Result.model_validate_json(line))
            except ValueError:
                continue
        return records

    def done_cells(self) -> set[str]:
        """Cells with a final answer (ok or skipped); errored cells are retried."""
        return {r.cell_key for r in self.read() if r.status != "error"}

    def append(self, records: list[Result]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        payload = "".join(r.model_dump_json() + "\n" for r in records)
        with open(self.path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.seek(0, os.SEEK_END)
                if handle.tell() > 0:  # a crash can leave a last line without its newline
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        handle.write(b"\n")
                handle.write(payload.encode())
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def latest(records: list[Result]) -> list[Result]:
    """The newest record for each (task, dataset, encoder, metric, params)."""
    newest: dict[str, Result] = {}
    for record in records:
        key = json.dumps([record.task, record.dataset, record.encoder, record.metric, record.params], sort_keys=True)
        newest[key] = record
    return list(newest.values())


@contextmanager
def exclusive_run(out_dir: Path) -> Iterator[None]:
    """Hold `<out>/.lock` for the whole run so two runs never share an output directory."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir / ".lock"
    with open(lock_path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HarnessError(
                f"another harness run is writing to {out_dir} (lock {lock_path}); "
                "wait for it to finish or choose another --out"
            ) from None
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


TRAINING = "training"  # <out>/training/<encoder>.json: how each trained encoder was trained


def write_training_summary(out_dir: Path, encoder: Encoder) -> None:
    """Keep a trained encoder's training summary beside the results, for the leaderboard."""
    summary = encoder.training_summary()
    if summary is None:
        return
    path = Path(out_dir) / TRAINING / f"{encoder.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, default=str)
    atomic_write(path, lambda tmp: tmp.write_text(text))
