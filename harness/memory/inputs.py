"""What a visual memory accepts: feature rows made unit length the same way whatever
their layout, integer ids, labels and counts refused when they would be truncated or
wrapped, and stored rows (from `from_arrays` or a file) checked as `add` would make them.
Every refusal names the argument or file at fault."""

from __future__ import annotations

import operator

import numpy as np

from harness.errors import HarnessError

INT64 = np.iinfo(np.int64)
TINY_NORM = 1e-12
"""Below this a row's float32 norm is unreliable (its squares underflow) and, from beyond
about 1e19, infinite: such rows are first divided by their largest value. All-zero rows
stay zero."""


def as_unit_rows(values: object, dim: int, what: str) -> np.ndarray:
    """`values` ([n, dim] or [dim], numpy or torch, any real dtype) as contiguous
    L2-normalised float32 rows, whatever the rows' scale.

    The rows are made C-contiguous float32 before the norms are taken: numpy sums a
    strided axis (an F-ordered array, a transposed tensor) in another order, so the same
    values would otherwise be stored as different bits and break ties differently. A row
    whose float32 values or norm overflow or underflow is first divided by its largest
    value, in the precision it was given in."""
    if hasattr(values, "detach"):  # a tensor; bfloat16 and half have no numpy dtype, so widen them first
        values = values.detach().cpu().resolve_conj().resolve_neg()
        values = (values.float() if values.is_floating_point() and values.element_size() < 4 else values).numpy()
    given = np.asarray(values)
    if given.dtype.kind == "c":
        raise HarnessError(f"{what} must be real numbers, got {given.dtype}")
    with np.errstate(over="ignore"):
        array = np.ascontiguousarray(given, dtype=np.float32)
    if array.ndim == 1:
        array, given = array[None], given[None]
    if array.ndim != 2 or array.shape[1] != dim:
        raise HarnessError(f"{what} must have shape [n, {dim}], got {list(array.shape)}")
    bad = ~np.isfinite(given).all(axis=1) if given.dtype.kind == "f" else np.zeros(len(given), bool)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise HarnessError(f"{what} contain NaN or infinite values (rows {rows}); check the encoder's output")
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(array, axis=1, keepdims=True)
    extreme = ~np.isfinite(norms[:, 0]) | ((norms[:, 0] < TINY_NORM) & (given != 0).any(axis=1))
    if extreme.any():
        rows = given[extreme]
        array = array.copy()
        array[extreme] = rows / np.abs(rows).max(axis=1, keepdims=True)
        norms[extreme] = np.linalg.norm(array[extreme], axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.maximum(norms, TINY_NORM), dtype=np.float32)


def int64_values(values: object, what: str) -> np.ndarray:
    """`values` (integers: a list, numpy array or torch tensor, any shape) as a new int64 array.

    Refused with a message naming `what`: non-integer dtypes (floats would be truncated,
    1.9 becoming 1), booleans, strings, None, and values outside int64 (which would wrap)."""
    if values is None:
        raise HarnessError(f"{what} must be integers (a list, numpy array or tensor), got None")
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise HarnessError(f"{what} must be an array of integers; cannot read {type(values).__name__} ({exc})") from None
    if array.size == 0:
        return np.zeros(array.shape, np.int64)
    if array.dtype.kind in "fO" and not isinstance(values, np.ndarray):
        # Python ints beyond int64 make numpy pick float64 or object: judge the ints themselves
        elements = np.asarray(values, dtype=object)
        if all(type(value) is int or isinstance(value, np.integer) for value in elements.flat):
            outside = [value for value in elements.flat if not INT64.min <= value <= INT64.max]
            if outside:
                raise HarnessError(f"{what} must fit in int64 ({INT64.min} to {INT64.max}); {outside[0]} does not")
            return elements.astype(np.int64)
    if array.dtype.kind not in "iu":
        example = array.reshape(-1)[0].item()
        raise HarnessError(f"{what} must be integers, got {array.dtype} values (such as {example!r}); pass an integer array")
    if array.dtype.kind == "u" and (array > INT64.max).any():
        raise HarnessError(f"{what} must fit in int64 ({INT64.min} to {INT64.max}); {array.max()} does not")
    return array.astype(np.int64)


def positive_int(value: object, what: str) -> int:
    """`value` as an int of at least 1; floats (2.7 would become 2) and bools are refused."""
    if isinstance(value, (bool, np.bool_)):
        raise HarnessError(f"{what} must be a positive integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise HarnessError(f"{what} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise HarnessError(f"{what} must be at least 1, got {number}")
    return number


def checked_rows(
    features: object, labels: object, ids: object, next_id: object, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Stored rows as a memory holds them: new C-contiguous float32 features [n, dim] of
    L2-normalised (or zero) rows, non-negative int64 labels [n], unique int64 ids [n],
    and the next id to hand out, above every id (None: just above the largest id).
    Anything else is refused with a message that starts with `where`."""
    try:
        rows = np.array(features, dtype=np.float32, order="C", copy=True)
    except (TypeError, ValueError) as exc:
        raise HarnessError(f"{where}: features must be an array of numbers ({exc})") from None
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise HarnessError(f"{where}: features must have shape [n, dim] with dim >= 1, got {list(rows.shape)}")
    labels = int64_values(labels, f"{where}: labels")
    ids = int64_values(ids, f"{where}: ids")
    if labels.ndim != 1 or ids.ndim != 1:
        raise HarnessError(
            f"{where}: labels and ids must be 1-D, one per row; got shapes {list(labels.shape)} and {list(ids.shape)}"
        )
    if not len(rows) == len(labels) == len(ids):
        raise HarnessError(f"{where}: {len(rows)} feature rows, {len(labels)} labels and {len(ids)} ids")
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        raise HarnessError(f"{where}: features contain NaN or infinite values (rows {np.flatnonzero(bad)[:5].tolist()})")
    norms = np.linalg.norm(rows.astype(np.float64), axis=1)
    bad = ~((np.abs(norms - 1.0) < 1e-4) | (norms == 0))
    if bad.any():
        raise HarnessError(
            f"{where}: features must be L2-normalised rows (rows {np.flatnonzero(bad)[:5].tolist()} are not); "
            "use add() for raw features"
        )
    if (labels < 0).any():
        raise HarnessError(f"{where}: labels must be non-negative integers (class indices), got {labels.min()}")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise HarnessError(f"{where}: ids must be unique; id {unique[counts > 1][0]} appears {counts.max()} times")
    floor = int(ids.max(initial=-1)) + 1
    if floor > INT64.max:
        raise HarnessError(f"{where}: ids must be below {INT64.max}, so that the next id to hand out fits in int64")
    if next_id is None:
        return rows, labels, ids, floor
    given = int64_values(next_id, f"{where}: next_id")
    if given.ndim != 0:
        raise HarnessError(f"{where}: next_id must be one integer, got shape {list(given.shape)}")
    if int(given) < floor:
        raise HarnessError(
            f"{where}: next_id {int(given)} is not above every id (the largest is {floor - 1}); "
            "add() would hand out ids already in the memory"
        )
    return rows, labels, ids, int(given)
