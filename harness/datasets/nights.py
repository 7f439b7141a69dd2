"""NIGHTS (Fu et al. 2023): image triplets with human similarity votes, read as released."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.datasets.images import DEFAULT_MAX_PIXELS, Preprocess, pixel_limit
from harness.datasets.spec import dataset_options
from harness.datasets.splits import ImageFileSplit
from harness.errors import DataFormatError

if TYPE_CHECKING:
    from harness.config.schema import DatasetSpec


@dataclass
class TripletSplit:
    """NIGHTS triplets: reference, left (distortion 0) and right (distortion 1) images,
    `p` = the fraction of human votes for the right image, the CSV's `id`s and rows."""

    name: str
    ref: ImageFileSplit
    left: ImageFileSplit
    right: ImageFileSplit
    p: np.ndarray
    ids: np.ndarray
    is_imagenet: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.p)


@dataclass
class NightsData:
    name: str
    root: Path
    splits: dict[str, TripletSplit]
    description: str = ""


NIGHTS_COLUMNS = ("id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "split", "is_imagenet")
NIGHTS_SPLITS = ("train", "val", "test_imagenet", "test_no_imagenet")


def _parse_bool(values: Any, path: Path, column: str) -> np.ndarray:
    out = []
    for row, value in enumerate(values):
        text = str(value).strip().lower()
        if text in ("true", "1", "1.0", "yes"):
            out.append(True)
        elif text in ("false", "0", "0.0", "no"):
            out.append(False)
        else:
            raise DataFormatError(f"{path}: row {row + 2}: column {column!r} must be True or False, got {value!r}")
    return np.asarray(out, dtype=bool)


def read_nights(name: str, spec: DatasetSpec) -> NightsData:
    """NIGHTS (Fu et al. 2023) as released: data.csv with columns id, left_vote,
    right_vote, votes, ref_path, left_path, right_path, split, is_imagenet, and the
    ref/NNN/MMM.png, distort/NNN/MMM_{0,1}.png tree it points to.

    Rows with votes >= `min_votes` (6) are kept, as DreamSim does. Splits: train, val,
    test_imagenet and test_no_imagenet (test split by is_imagenet). `p` is the
    fraction of votes for the right image: right_vote itself when the two vote
    columns are fractions (they sum to 1, as released), else right / (left + right).
    Images: bicubic resize to `size` x `size` (224), no crop; `max_pixels` is the largest
    image decoded (width x height, PIL's threshold of 89478485).
    """
    import pandas

    options = dataset_options(name, spec, {"size": 224, "min_votes": 6, "workers": None, "max_pixels": DEFAULT_MAX_PIXELS})
    root = spec.resolved_root(name)
    csv = root / "data.csv"
    if not csv.is_file():
        raise DataFormatError(f"{csv}: file not found (the NIGHTS root holds data.csv, ref/ and distort/)")
    try:
        table = pandas.read_csv(csv)
    except Exception as exc:
        raise DataFormatError(f"{csv}: not a readable CSV file ({exc})") from None
    missing = [c for c in NIGHTS_COLUMNS if c not in table.columns]
    if missing:
        raise DataFormatError(f"{csv}: missing column(s) {missing} (found: {', '.join(map(str, table.columns))})")
    numeric = {}
    for column in ("left_vote", "right_vote", "votes"):
        values = pandas.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise DataFormatError(f"{csv}: row {bad[0] + 2}: column {column!r} must be a number, got {table[column].iloc[bad[0]]!r}")
        numeric[column] = values
    for column in ("ref_path", "left_path", "right_path", "split"):
        bad = np.flatnonzero(table[column].isna().to_numpy())
        if len(bad):
            raise DataFormatError(f"{csv}: row {bad[0] + 2}: column {column!r} is empty")
    split_names = table["split"].astype(str).str.strip().to_numpy()
    unknown = np.flatnonzero(~np.isin(split_names, ["train", "val", "test"]))
    if len(unknown):
        raise DataFormatError(f"{csv}: row {unknown[0] + 2}: split must be train, val or test, got {split_names[unknown[0]]!r}")
    is_imagenet = _parse_bool(table["is_imagenet"], csv, "is_imagenet")
    left, right = numeric["left_vote"], numeric["right_vote"]
    if ((left < 0) | (right < 0)).any():
        row = int(np.flatnonzero((left < 0) | (right < 0))[0])
        raise DataFormatError(f"{csv}: row {row + 2}: vote columns must be non-negative")
    total = left + right
    if np.allclose(total, 1.0, atol=1e-6):
        p = np.clip(right, 0.0, 1.0)  # within the tolerance right_vote may pass 1 by a rounding step
    else:
        zero = np.flatnonzero(total <= 0)
        if len(zero):
            raise DataFormatError(f"{csv}: row {zero[0] + 2}: left_vote and right_vote are both 0")
        p = right / total
    keep = numeric["votes"] >= float(options["min_votes"])
    size = int(options["size"])
    preprocess = Preprocess(crop=size, resize=size, mode="squash")
    limit = pixel_limit(name, options)
    splits = {}
    for split in NIGHTS_SPLITS:
        if split.startswith("test"):
            mask = keep & (split_names == "test") & (is_imagenet == (split == "test_imagenet"))
        else:
            mask = keep & (split_names == split)
        rows = np.flatnonzero(mask)
        origin = (lambda rows: lambda i: f"data.csv row {rows[i] + 2}")(rows)
        images = {}
        for column in ("ref_path", "left_path", "right_path"):
            paths = [root / str(v).strip() for v in table[column].to_numpy()[rows]]
            images[column] = ImageFileSplit(paths, np.zeros(len(rows), np.int64), preprocess, options["workers"], origin, limit)
        splits[split] = TripletSplit(
            name=split, ref=images["ref_path"], left=images["left_path"], right=images["right_path"],
            p=p[rows].astype(np.float64), ids=table["id"].to_numpy()[rows], is_imagenet=is_imagenet[rows], rows=rows + 2,
        )
    return NightsData(name=name, root=root, splits=splits, description=f"NIGHTS, votes >= {options['min_votes']}")
