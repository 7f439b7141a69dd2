"""The figures a profile's benchmark should reach (`bench.targets` in registry.yaml),
looked up in the measured stages and shown met or not at the top of the report, each
with what limits it: its share of the bf16 limit where its row has one, and where the
profile stage found the time of the same work going."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from harness.bench.profiling import audit_work, classify_work, generate_work, train_work
from harness.bench.timing import BUSY_ROW

if TYPE_CHECKING:
    from harness.config.schema import TargetSpec

TARGETS = "targets"
GPU_SUFFIX = " (GPU)"  # performance.json keeps a stage measured on a GPU beside the CPU's, under this suffix
PROFILE = "profile"
LIMIT_COLUMN = "bf16_limit_images_per_s"  # a row's physical limit, where its stage computes one
SHOWN_PARTS = 3  # the largest shares of a profiled work named beside a target
# A training figure measured beside data workers, and the column of the same steps with
# the model alone (a batch in memory, no workers), where the train stage gives both.
ALONE_COLUMNS = {"images_per_s": "model_alone_images_per_s", "compiled_images_per_s": "compiled_model_images_per_s"}
# The rate end to end if the model and the data took turns on one device, each at its rate
# alone (the data alone: `data_alone_images_per_s`), where the train stage gives it.
TURNS_COLUMNS = {"images_per_s": "taking_turns_images_per_s", "compiled_images_per_s": "compiled_taking_turns_images_per_s"}
# The rate end to end on the generator's images written as files first (`bench.prerendered`).
PRERENDERED_COLUMN = "prerendered_images_per_s"


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


def profiled_works(target: TargetSpec, profile: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The profile stage's rows of the work that makes the target's figure, a list per
    profiled work: training the target's encoder (eager steps: not for a figure under
    torch.compile); generating with its generator at its size (the parts the generator
    counts, then the torch operators of the same call where the profile lists them);
    classifying against its memory, or auditing it. None for other targets."""
    where = target.where
    if "generator" in where and "size" in where:
        patterns = [generate_work("*", where["size"], where["generator"], how) for how in ("parts", "operators")]
    elif "encoder" in where and target.stage == "train" and "compiled" not in target.column and target.column != PRERENDERED_COLUMN:
        patterns = [train_work(where["encoder"])]
    elif "memory" in where:
        work = audit_work if target.column.startswith("audit") else classify_work
        patterns = [work("*", where["memory"])]
    else:
        return []
    works = []
    for pattern in patterns:
        matched = [row for row in profile if fnmatchcase(str(row.get("work", "")), pattern)]
        if matched:
            works.append([row for row in matched if row["work"] == matched[0]["work"]])
    return works


def where_time_goes(rows: list[dict[str, Any]]) -> str:
    """A profiled work in a line: the device's busy share, where the profile gives it,
    and the `SHOWN_PARTS` operators or parts with the largest shares of its time. A busy
    share taken over the profiled wall time (rows measured before `wall_ms` was) says so:
    the profiler's own work lengthens that time."""
    busy = [row for row in rows if row.get("operator") == BUSY_ROW]
    parts = sorted((row for row in rows if row not in busy), key=lambda row: -float(row.get("share") or 0))[:SHOWN_PARTS]
    text = ", ".join(f"{row['operator']} {float(row['share']):.0%}" for row in parts)
    if not busy:
        return text
    over = "" if "wall_ms" in busy[0] else " of the profiled wall time"
    return f"busy {float(busy[0]['share']):.0%}{over}; {text}"


def alone_column(column: str, row: dict[str, Any]) -> str:
    """The column of the model alone for a training figure measured beside data workers:
    for the figure on pre-rendered files, the compiled model's where the files were
    read under torch.compile."""
    if column == PRERENDERED_COLUMN:
        return ALONE_COLUMNS["compiled_images_per_s" if row.get("prerendered_under_compile") else "images_per_s"]
    return ALONE_COLUMNS.get(column, "")


def beside_the_workers(target: TargetSpec, row: dict[str, Any]) -> str:
    """For a training figure measured beside data workers: its share of the rate of the
    model alone, and of the time spent waiting for the data where the row gives it; and
    the rate if the model and the data took turns on the device, where the row gives
    it, or, for files decoded on the CPU while the device trains, the rate of those
    workers alone. The workers may slow the steps without the data ever being late
    (sharing the cores, or a GPU they render on); a figure above the taking-turns rate
    ran partly on batches made before it was timed."""
    workers = row.get("prerendered_data_workers" if target.column == PRERENDERED_COLUMN else "data_workers")
    alone = row.get(alone_column(target.column, row))
    if target.stage != "train" or not isinstance(alone, (int, float)) or alone <= 0 or not workers:
        return ""
    compiled = " (compiled)" if target.column == PRERENDERED_COLUMN and row.get("prerendered_under_compile") else ""
    text = f"beside {workers} data workers: {float(row[target.column]) / alone:.0%} of the model alone's rate{compiled}"
    data = row.get("data_images_per_s")
    if target.column == "images_per_s" and isinstance(data, (int, float)) and data > 0:
        text += f", waiting for data {float(row[target.column]) / data:.0%}"
    files_alone = row.get("prerendered_data_alone_images_per_s")
    if target.column == PRERENDERED_COLUMN and isinstance(files_alone, (int, float)):
        return text + f"; the files read alone: {files_alone:,.0f}/s (written at {float(row['prerender_images_per_s']):,.0f}/s)"
    turns, data_alone = row.get(TURNS_COLUMNS.get(target.column, "")), row.get("data_alone_images_per_s")
    if isinstance(turns, (int, float)) and isinstance(data_alone, (int, float)):
        text += f"; taking turns with the data (alone {data_alone:,.0f}/s) on one device: {turns:,.0f}/s"
    return text


def target_rows(targets: list[TargetSpec], state: dict[str, Any], suffix: str) -> list[dict[str, Any]]:
    """One row per target: the measured figure (from the stage `target.stage + suffix`),
    its floor and aim, the verdict, the ratio to the aim and the machine it came from;
    where known, its share of the bf16 limit, how data workers slowed it
    (`beside_the_workers`) and where the profile stage (same suffix) found the time of
    the same work going (`profiled_works`)."""
    rows = []
    profile = (state.get(PROFILE + suffix) or {}).get("rows", [])
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
            limit = found[0].get(LIMIT_COLUMN)
            known = isinstance(limit, (int, float)) and limit > 0 and not lower_is_better
            row["fraction_of_bf16_limit"] = round(value / limit, 3) if known else ""
            limits = [beside_the_workers(target, found[0])]
            limits += [f"{rows[0]['work']}: {where_time_goes(rows)}" for rows in profiled_works(target, profile)]
            row["where_time_goes"] = "; ".join(text for text in limits if text)
        rows.append(row)
    return rows
