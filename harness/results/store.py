"""Result records and the append-only results.jsonl they live in.

One cell of the cross product (encoder x task x dataset) appends all its records in a
single write under an exclusive lock, followed by fsync. Each line is one record; the
records of a cell end with two extra fields, `cell_records` (how many records the cell
wrote) and `cell_checksum` (a hash of those records), so the reader keeps whole cells only:
a cell cut short (a killed process, a full disk) is ignored, named, and computed again.
Records without these fields (files written before they existed) count as whole cells.
A write that fails is taken back, so earlier cells are never damaged by a later one.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    encoder_spec: dict[str, Any] | None = Field(
        None, description="the encoder's plugin, registry parameters and architecture, so that seed groups and "
        "the generator ranking read what a record was computed with (older records: the registry's entry)"
    )
    task_plugin: str = ""
    cell_key: str = Field("", description="hash of everything that determined this cell")
    keys: dict[str, Any] = Field(default_factory=dict, description="config hashes, code version, seed")
    created: str = ""
    outcomes: str | None = Field(
        None,
        description="per-test-image 0/1 outcomes of a headline record (e.g. top-1 correct), in test order: "
        "numpy.packbits (first image in the high bit) then base64; `n` bits; see pack_outcomes",
    )


def pack_outcomes(correct: Any) -> str:
    """Per-image 0/1 outcomes as base64 of their packed bits: 50,000 test images take
    about 8 kB of a results.jsonl line, where a list of 0/1 would take 100 kB."""
    import base64

    import numpy as np

    bits = np.asarray(correct).reshape(-1)
    if bits.size and not np.isin(bits, (0, 1)).all():
        raise ValueError("outcomes must be 0/1 (or booleans), one per test image")
    return base64.b64encode(np.packbits(bits.astype(bool)).tobytes()).decode("ascii")


def unpack_outcomes(text: str, n: int) -> Any:
    """The `n` 0/1 outcomes (uint8 array) that `pack_outcomes` packed into `text`."""
    import base64
    import binascii

    import numpy as np

    try:
        packed = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8)
    except (binascii.Error, ValueError):
        raise ValueError("outcomes is not base64 text") from None
    if n < 0 or len(packed) != (n + 7) // 8:
        raise ValueError(f"outcomes holds {len(packed)} bytes, {n} images need {(n + 7) // 8}")
    return np.unpackbits(packed, count=n)


class OutputNotWritable(HarnessError):
    """A file or folder of the output directory could not be written (full disk, no
    permission, something else in the way); what was written before is kept."""


WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full: free some space or choose another --out",
    errno.EDQUOT: "your disk quota is used up: free some space or choose another --out",
    errno.EFBIG: "the file is too large for that file system: choose another --out",
    errno.EACCES: "no permission to write there: make it writable or choose another --out",
    errno.EPERM: "no permission to write there: make it writable or choose another --out",
    errno.EROFS: "the file system is read-only: choose another --out",
    errno.EEXIST: "a file is in the way where a folder is needed: move it or choose another --out",
    errno.ENOTDIR: "a file is in the way where a folder is needed: move it or choose another --out",
    errno.EISDIR: "a folder is in the way where a file is written: move it or choose another --out",
    errno.ENOENT: "a folder on the way cannot be created there: choose another --out",
}


@contextmanager
def output_errors(target: Path, kept: str = "Results already in results.jsonl are kept") -> Iterator[None]:
    """Turn a failed write of `target` (or of the file the error names) into an
    `OutputNotWritable` naming the path, what to do, and what was `kept`; other errors
    pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_FAILURES:
            raise
        path = exc.filename2 or exc.filename or target  # a rename names its destination second
        raise OutputNotWritable(
            f"cannot write {os.fsdecode(path)}: {exc.strerror}; {WRITE_FAILURES[exc.errno]}. "
            f"{kept}: run the same command again to finish."
        ) from None


CELL_RECORDS, CELL_CHECKSUM = "cell_records", "cell_checksum"


def _checksum(bodies: list[str]) -> str:
    return hashlib.sha256("\n".join(bodies).encode()).hexdigest()[:16]


def _frame_suffix(count: int, checksum: str) -> str:
    """The end of each line of a cell: its record count and checksum as two more fields."""
    return f',"{CELL_RECORDS}":{count},"{CELL_CHECKSUM}":"{checksum}"}}'


def _framed_lines(records: list[Result]) -> bytes:
    """One cell's records as results.jsonl lines that say how many they are and what they hold."""
    # records without outcomes keep the lines they had before the field existed
    bodies = [record.model_dump_json(exclude=None if record.outcomes is not None else {"outcomes"}) for record in records]
    suffix = _frame_suffix(len(bodies), _checksum(bodies))
    return "".join(body[:-1] + suffix + "\n" for body in bodies).encode()


@dataclass
class _Line:
    """One parsed line: its record and, for lines that carry them, its cell's record count,
    checksum and the record's JSON without those two fields."""

    record: Result
    count: int | None = None
    checksum: str | None = None
    body: str = ""


def _parse_line(line: str) -> _Line | None:
    """The line's record, or None when the line is not a whole record."""
    try:
        data = json.loads(line)
        record = Result.model_validate(data)
    except ValueError:
        return None
    count, checksum = data.get(CELL_RECORDS), data.get(CELL_CHECKSUM)
    if count is None and checksum is None:  # written before cells carried a count
        return _Line(record)
    if not (isinstance(count, int) and count > 0 and isinstance(checksum, str)):
        return None
    suffix = _frame_suffix(count, checksum)
    body = line[: -len(suffix)] + "}" if line.endswith(suffix) else line  # a rewritten line fails the checksum
    return _Line(record, count, checksum, body)


_LEADING_NAMES = re.compile(r'^\{"task":("(?:[^"\\]|\\.)*"),"dataset":("(?:[^"\\]|\\.)*"),"encoder":("(?:[^"\\]|\\.)*")')


def _torn_record_names(line: str) -> tuple[str, str, str] | None:
    """(encoder, task, dataset) from the start of a torn line, when it got that far."""
    found = _LEADING_NAMES.match(line)
    if found is None:
        return None
    task, dataset, encoder = (json.loads(group) for group in found.groups())
    return encoder, task, dataset


@dataclass
class _OpenCell:
    """The lines read so far of a cell whose lines carry its record count and checksum."""

    count: int
    checksum: str
    lines: list[_Line] = field(default_factory=list)

    def whole(self) -> bool:
        return _checksum([line.body for line in self.lines]) == self.checksum


@dataclass
class Contents:
    """What results.jsonl holds: the records of whole cells, and one message for each cell
    that was cut short or damaged, is ignored, and is not there whole."""

    records: list[Result] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)


class ResultStore:
    """`<out>/results.jsonl`: append whole cells, read them back, know which are done."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "results.jsonl"

    def read(self) -> list[Result]:
        """The records of every whole cell."""
        return self.scan().records

    def scan(self) -> Contents:
        """The records of every whole cell, and a message for each cell that the file holds
        only in part (cut short, torn, or not matching its checksum) and nowhere whole."""
        contents = Contents()
        if not self.path.is_file():  # absent, or not a file that holds results (e.g. a device)
            return contents
        damage: list[tuple[tuple[str, str, str], str]] = []  # (encoder, task, dataset), message
        cell: _OpenCell | None = None
        for number, text in enumerate(self.path.read_text(errors="replace").split("\n"), start=1):
            if not text.strip():
                continue
            line = _parse_line(text)
            if cell is not None and (line is None or line.checksum != cell.checksum):
                damage.append(self._damaged_cell(cell, f"then line {number}, which is not one of them"))
                cell = None
            elif line is None and (names := _torn_record_names(text)):
                damage.append((names, f"{self.path} line {number} is a torn record of cell {' / '.join(names)}"))
            if line is None:
                continue
            if line.count is None or line.checksum is None:
                contents.records.append(line.record)
                continue
            cell = cell or _OpenCell(line.count, line.checksum)
            cell.lines.append(line)
            if len(cell.lines) == cell.count:
                if cell.whole():
                    contents.records.extend(line.record for line in cell.lines)
                else:
                    damage.append(self._damaged_cell(cell, "whose content does not match its checksum"))
                cell = None
        if cell is not None:
            damage.append(self._damaged_cell(cell, "at the end of the file"))
        whole = {(r.encoder, r.task, r.dataset) for r in contents.records}
        contents.damaged = [
            f"{message} (a write cut short or damaged); it is ignored and computed again by the next run that includes it"
            for names, message in damage
            if names not in whole
        ]
        return contents

    def _damaged_cell(self, cell: _OpenCell, what_follows: str) -> tuple[tuple[str, str, str], str]:
        first = cell.lines[0].record
        names = (first.encoder, first.task, first.dataset)
        return names, (
            f"{self.path}: cell {' / '.join(names)} (key {first.cell_key[:12]}) "
            f"holds {len(cell.lines)} of its {cell.count} records, {what_follows}"
        )

    def done_cells(self) -> set[str]:
        """Cells with a final answer (ok or skipped); errored cells are retried."""
        return {r.cell_key for r in self.read() if r.status != "error"}

    def append(self, records: list[Result]) -> None:
        """Append one cell's records as one write; on failure the file is cut back to its
        previous end, so the cell is absent rather than partly there."""
        payload = _framed_lines(records)
        with output_errors(self.path):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)  # released when the descriptor closes
                end = os.lseek(descriptor, 0, os.SEEK_END)
                if end > 0 and os.pread(descriptor, 1, end - 1) != b"\n":
                    payload = b"\n" + payload  # a crash can leave a last line without its newline
                try:
                    _write_all(descriptor, payload)
                    os.fsync(descriptor)
                except OSError:
                    _truncate_quietly(descriptor, end)
                    raise
            finally:
                os.close(descriptor)


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]


def _truncate_quietly(descriptor: int, size: int) -> None:
    """Cut a file back to `size` after a failed write; a device (no size) is left alone."""
    try:
        os.ftruncate(descriptor, size)
        os.fsync(descriptor)
    except OSError:
        pass


def latest(records: list[Result]) -> list[Result]:
    """The newest record for each (task, dataset, encoder, metric, params), `records` in
    the order they were written. A cell whose newest record is an error shows that error
    alone; one whose newest record is not shows no error records (an older failure was
    computed again since), as the runner decides what to reuse. A cell with a value
    computed on the whole data shows no record of a `--limit` subset, however new: a
    quick look does not replace the number it approximates."""
    whole = {(r.task, r.dataset, r.encoder) for r in records if "limit" not in r.keys and r.status == "ok"}
    records = [r for r in records if "limit" not in r.keys or (r.task, r.dataset, r.encoder) not in whole]
    failed = {(r.task, r.dataset, r.encoder): r.status == "error" for r in records}
    newest: dict[str, Result] = {}
    for record in records:
        if (record.status == "error") != failed[(record.task, record.dataset, record.encoder)]:
            continue
        key = json.dumps([record.task, record.dataset, record.encoder, record.metric, record.params], sort_keys=True)
        newest[key] = record
    return list(newest.values())


@contextmanager
def exclusive_run(out_dir: Path) -> Iterator[None]:
    """Hold `<out>/.lock` for the whole run so two runs never share an output directory."""
    lock_path = out_dir / ".lock"
    with output_errors(lock_path):
        out_dir.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "wb", buffering=0)  # unbuffered: a failed write leaves nothing to flush
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HarnessError(
                f"another harness run is writing to {out_dir} (lock {lock_path}); "
                "wait for it to finish or choose another --out"
            ) from None
        with output_errors(lock_path):
            handle.write(str(os.getpid()).encode())
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
