"""The figures a profile's benchmark should reach (`bench.targets` in registry.yaml),
looked up in the measured stages and shown met or not at the top of the report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.config.schema import TargetSpec

TARGETS = "targets"
GPU_SUFFIX = " (GPU)"  # performance.json keeps a stage measured on a GPU beside the CPU's, under this suffix


def accelerator(entry: dict[str, Any]) -> str:
    """The GPU (or "CPU") a stage's rows were measured on."""
    if "accelerator" in entry:
        return str(entry["accelerator"])
    parts = str(entry.get("machine", "")).split("; ")  # reports written before the field existed
    return parts[1].split(",")[0] if len(parts) > 1 else "unknown"


def verdict(value: float, target: TargetSpec) -> str:
    lower_is_better = target.aim < target.floor
    better = (lambda a, b: a <= b) if lower_is_better else (lambda a, b: a >= b)
    if better(value, target.aim):
        return "aim met"
    return "floor met, aim not" if better(value, target.floor) else "floor not met"


def target_rows(targets: list[TargetSpec], state: dict[str, Any], suffix: str) -> list[dict[str, Any]]:
    """One row per target: the measured figure (from the stage `target.stage + suffix`),
    its floor and aim, the verdict, the ratio to the aim and the machine it came from."""
    rows = []
    for target in targets:
        entry = state.get(target.stage + suffix)
        found = [
            row for row in (entry or {}).get("rows", [])
            if all(row.get(key) == value for key, value in target.where.items()) and isinstance(row.get(target.column), (int, float))
        ]
        row: dict[str, Any] = {"target": target.label, "floor": target.floor, "aim": target.aim}
        if not found:
            row.update({"measured": "", "verdict": "not measured"})
        else:
            value = float(found[0][target.column])
            lower_is_better = target.aim < target.floor
            row.update({
                "measured": value,
                "verdict": verdict(value, target),
                "fraction_of_aim": round(target.aim / value if lower_is_better else value / target.aim, 3),
                "measured_on": accelerator(entry or {}),
                "date": (entry or {}).get("date", ""),
            })
        rows.append(row)
    return rows
