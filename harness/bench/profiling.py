"""The profile stage: where the time of training steps, of sampling generators and of a
memory classification goes, so a target missed comes with what limits it. Training is
profiled by operator (torch.profiler, GPU time on a GPU); generators by the parts they
count themselves (e.g. waiting for the GPU, reading back), since their GL work runs
outside Python, by the torch operators of the same call (the kernels of work such as
K-Means Leaves' 2-means, which a wait for the GPU hides from the parts) and by Python
function (cProfile); classification by Python function, since most of its host time is
numpy, which torch's profiler does not see."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from harness.bench.memory import synthetic_memory, synthetic_queries
from harness.bench.timing import TOP, operator_profile
from harness.bench.train import is_trainable
from harness.runner.context import RunContext

OPERATORS_SHOWN = 0.01  # the busy share from which a generator call's torch operators are listed

if TYPE_CHECKING:
    from harness.config.schema import ProfileSpec
    from harness.kinds import Generator
    from harness.config.registry import Registry


def function_profile(run: Callable[[], Any]) -> list[dict[str, Any]]:
    """The `TOP` Python functions of `run()` with the most own time (cProfile)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(run)
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, primitive, own s, cumulative s, callers)
    total = sum(entry[2] for entry in stats.values()) or 1.0
    top = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:TOP]
    return [
        {"operator": f"{name} ({file.rsplit('/', 1)[-1]}:{line})"[:60], "calls": entry[0],
         "self_ms": round(entry[2] * 1000, 2), "share": round(entry[2] / total, 3)}
        for (file, line, name), entry in top
    ]


def time_split(generator: Generator, n: int, size: int) -> tuple[list[dict[str, Any]], float]:
    """The parts of one call making `n` images, as far as the generator counts them
    (`Generator.time_split`): seconds each, and their share of the call's wall time;
    and that wall time, in seconds."""
    before = generator.time_split()
    start = time.perf_counter()
    generator.sample(seed=3, n=n, size=size)
    wall = time.perf_counter() - start
    spent = {part: seconds - before.get(part, 0.0) for part, seconds in generator.time_split().items()}
    rows = [
        {"operator": part, "self_ms": round(seconds * 1000, 2), "share": round(seconds / wall, 3)}
        for part, seconds in spent.items() if seconds > 0
    ]
    return rows, wall


def generator_operators(generator: Generator, n: int, size: int, device: str, unprofiled_s: float) -> list[dict[str, Any]]:
    """The torch operators of the call `time_split` timed (same seed, same images), by
    the time of the kernels each launched on a GPU (`operator_profile`, its busy share
    over `unprofiled_s`, that call's wall time); none where torch operators took less
    than `OPERATORS_SHOWN` of the call (a generator of numpy or GL work)."""
    with operator_profile(device, unprofiled_s) as rows:
        generator.sample(seed=3, n=n, size=size)
    return rows if rows and rows[0]["share"] >= OPERATORS_SHOWN else []


def train_work(encoder: str) -> str:
    return f"train {encoder} (operators)"


def generate_work(n: int | str, side: int, generator: str, how: str) -> str:
    return f"generate {n} x {side} px {generator} ({how})"


def classify_work(queries: int | str, rows: int) -> str:
    return f"classify {queries} queries, memory {rows} (functions)"


def audit_work(queries: int | str, rows: int) -> str:
    return f"audit {queries} queries, memory {rows} (functions)"


def bench_profile(registry: Registry, profile: ProfileSpec, quick: bool, device: str) -> Iterator[dict[str, Any]]:
    """Operators of a few training steps of the profile's first trainable encoder; the
    parts, the operators and the functions of sampling each of the profile's generators
    at its largest size; the functions of classifying queries against the profile's
    largest memory, and of auditing it with the same queries. The memory's worker
    threads are not profiled: the main thread's wait for them is their share."""
    spec = profile.bench
    on_gpu = device.startswith("cuda")
    trainable = [n for n in profile.encoders if is_trainable(registry, n)]
    if trainable:
        encoder = registry.create("encoder", trainable[0])
        cost = encoder.training_cost()
        if cost is not None:
            batch = cost.batch_size if on_gpu else min(cost.batch_size, 4)  # on a CPU the shares, not the speed, matter
            measured = encoder.measure_training(RunContext(registry=registry, device=device), 2, batch, None, profile=True)
            yield from ({"work": train_work(encoder.name), **row} for row in measured.get("operators", []))
    for name in profile.generators:
        generator = registry.create("generator", name)
        side, n = max(spec.sizes), (16 if quick else 1024)
        generator.sample(seed=1, n=n, size=side)  # first use: programs compile, kernels load
        parts, wall = time_split(generator, n, side)
        yield from ({"work": generate_work(n, side, name, "parts"), **row} for row in parts)
        operators = generator_operators(generator, n, side, device, wall)
        yield from ({"work": generate_work(n, side, name, "operators"), **row} for row in operators)
        work = generate_work(n, side, name, "functions")
        yield from ({"work": work, **row} for row in function_profile(lambda: generator.sample(seed=2, n=n, size=side)))
        generator.close()
    size = 2_000 if quick else max(spec.memory_rows)
    queries = min(spec.memory_queries, 5_000)
    memory = synthetic_memory(size, 384, 100, seed=1234, device=device, backend="torch" if on_gpu else "auto")
    query_rows = synthetic_queries(queries, 384, 100, seed=1235)
    memory.classify(query_rows[:50], k=20)  # the index is built outside the profile
    work = classify_work(queries, size)
    yield from ({"work": work, **row} for row in function_profile(lambda: memory.classify(query_rows, k=20)))
    work = audit_work(queries, size)
    yield from ({"work": work, **row} for row in function_profile(lambda: memory.privacy_report(query_rows, k=20)))
