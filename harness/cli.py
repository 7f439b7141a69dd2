"""The `harness` command line. Heavy libraries are imported inside each command."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import re
import signal
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.version import __version__
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.config.schema import GeneratorComparisonSpec


def _summary(doc: str | None) -> str:
    """The first sentence of a docstring, on one line (a sentence may span lines)."""
    paragraph = " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())
    first = re.match(r"(.+?\.)(?=\s+[A-Z])", paragraph)
    return first.group(1) if first else paragraph


def cmd_list(args: argparse.Namespace) -> int:
    """Plugins, instances, dataset formats, datasets and profiles whose names match a
    shell-style glob; a pattern that names exactly one instance or plugin also prints its
    parameters, one that names a format its options."""
    from fnmatch import fnmatch

    from harness.config.registry import use_registry
    from harness.runner.dryrun import dataset_status

    registry = use_registry(args.registry)
    pattern = args.pattern or "*"
    print(f"registry: {registry.path}")
    matched = 0
    for kind in ("generator", "encoder", "task"):
        plugins = registry.plugins.classes[kind]
        lines = []
        for name in sorted(plugins):
            if fnmatch(name, pattern):
                lines.append(f"  plugin   {name:<22} {_summary(plugins[name].cls.__doc__)}  [{plugins[name].source}]")
        for name, spec in registry.section(kind).items():
            if fnmatch(name, pattern):
                state = "" if spec.plugin in plugins else "  (plugin not loaded)"
                lines.append(f"  instance {name:<22} -> {spec.plugin} {spec.params}{state}")
        matched += _print_section(f"{kind}s", lines)
        exact = registry.spec(kind, pattern)
        plugin_name = exact.plugin if exact is not None else pattern
        if (exact is not None or pattern in plugins) and plugin_name in plugins:
            print(parameter_table(plugins[plugin_name].cls.Params, exact.params if exact is not None else {}))
            if exact is not None:
                inventory = registry.create(kind, pattern).inventory()
                if inventory:
                    print(f"\n{inventory}")
    formats = registry.plugins.formats
    matched += _print_section("dataset formats", [
        f"  format   {name:<22} {_summary(fmt.reader.__doc__)}  [{fmt.source}]" for name, fmt in sorted(formats.items()) if fnmatch(name, pattern)
    ])
    if pattern in formats:  # a format's options are in its reader's docstring
        print("\n" + textwrap.indent(inspect.getdoc(formats[pattern].reader) or "", "  "))
    matched += _print_section("datasets", [
        f"  dataset  {name:<22} {spec.format:<16} {dataset_status(name, spec, formats)}"
        for name, spec in sorted(registry.config.datasets.items()) if fnmatch(name, pattern)
    ])
    matched += _print_section("profiles", [
        f"  {name}: encoders={p.encoders} tasks={p.tasks}" + _compared(p.compare_generators, p.generators)
        for name, p in registry.config.profiles.items() if fnmatch(name, pattern)
    ])
    if registry.plugins.broken:
        print("\nbroken plugins (not loaded)")
        for broken in registry.plugins.broken:
            print(f"  {broken.source}: {broken.error}")
    if not matched:
        print(f"\nnothing matched {pattern!r} (a shell-style glob: '*' any text, '?' one character, e.g. 'dino-*')", file=sys.stderr)
        return 1
    return 0


def _print_section(title: str, lines: list[str]) -> int:
    """Print `lines` under `title` unless there are none; how many there were."""
    if lines:
        print(f"\n{title}", *lines, sep="\n")
    return len(lines)


def parameter_table(params: type, values: dict) -> str:
    """A plugin's parameters: name, type, range, default, the instance's value, meaning."""
    from tabulate import tabulate

    rows = []
    for name, field in params.model_fields.items():
        default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
        value = repr(values[name]) if name in values else ""
        rows.append((name, _type_name(field.annotation), _range(field), default, value, field.description or ""))
    if not rows:
        return "\n  parameters: none"
    return "\n  parameters\n" + tabulate(rows, headers=["name", "type", "range", "default", "set here", "meaning"], tablefmt="simple")


BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >="), ("max_length", "length <="))
"""The constraints a parameter's range shows (pydantic's Field(ge=...) and the like), with their signs."""


def _range(field: Any) -> str:
    """The bounds a parameter's value must keep, e.g. ">= 8, <= 1024" (empty when none)."""
    import typing

    constraints = list(field.metadata)
    if typing.get_origin(field.annotation) is typing.Annotated:  # PositiveInt and the like
        constraints += typing.get_args(field.annotation)[1:]
    return ", ".join(f"{sign} {getattr(c, attr)}" for c in constraints for attr, sign in BOUNDS if getattr(c, attr, None) is not None)


def _type_name(annotation: object) -> str:
    """A parameter's type as a reader writes it: `list[str] | None`, `Literal['a', 'b']`."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(arg) for arg in args)}]"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(arg) for arg in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _compared(spec: GeneratorComparisonSpec | None, generators: list[str]) -> str:
    """How a profile that compares generators trains one encoder per generator and seed."""
    if spec is None:
        return ""
    return f"\n      + {spec.name} for each of {generators} (+ --generators): {spec.plugin} {spec.params}, seeds {spec.seeds}"


def cmd_run(args: argparse.Namespace) -> int:
    from harness.config.registry import use_registry
    from harness.downloads import no_downloads
    from harness.runner.cells import Runner

    if args.device is not None and args.launcher == "slurm":
        raise HarnessError(
            f"--device {args.device}: sets where a local run computes; a cluster's jobs compute on the GPUs they ask for "
            "(registry.yaml's slurm.train_gpus and slurm.eval_gpus, or --train-gpus and --eval-gpus): leave --device out"
        )
    registry = use_registry(args.registry)
    for option in ("partition", "train_gpus", "eval_gpus", "mem_gb"):
        if getattr(args, option) is not None:
            setattr(registry.config.slurm, option, getattr(args, option))
    runner = Runner(
        registry, out_dir=Path(args.out), device=args.device, force=args.force, seed=args.seed, threads=args.threads, limit=args.limit,
    )
    # a plan looks at local caches only: it fetches no weights, nor waits on a hub
    with no_downloads() if args.dry_run else contextlib.nullcontext():
        plan = runner.select(args.profile, args.encoders, args.tasks, args.generators, scale=args.scale)
        if args.dry_run:
            from harness.runner.dryrun import describe_plan

            print(describe_plan(runner, plan, args.launcher, embed_images_per_s=args.embed_rate, train_images_per_s=args.train_rate))
            return 0
    if args.launcher == "slurm":
        from harness.runner.launch import SlurmLauncher

        produced = SlurmLauncher(runner, registry.config.slurm, cluster=args.cluster).run(plan)
    else:
        with _sigterm_as_interrupt():
            produced = runner.run(plan)
    from harness.runner.cells import exit_status

    return exit_status(produced)


def cmd_generate(args: argparse.Namespace) -> int:
    from harness.config.registry import use_registry
    from harness.results.store import output_errors
    from harness.streaming import write_grid, write_imagefolder

    if args.format is not None and not args.dataset:
        raise HarnessError(f"--format {args.format} sets the files of the dataset --dataset writes; add --dataset (the grid is a PNG)")
    registry = use_registry(args.registry)
    generator = registry.create("generator", args.generator)
    out = Path(args.out)
    grid = out / f"{args.generator}_grid.png"
    staged = grid.with_name(f".new-{grid.name}")  # replaces the grid once the dataset, if any, is written
    try:
        with output_errors(out, kept="Images already written are kept"):
            write_grid(generator, staged, n=min(args.n, 64), size=args.size, seed=args.seed)  # checks the generator's output first
            if args.dataset:  # a folder of another generator, seed, size or format is refused with the grid left as it was
                folder = write_imagefolder(
                    generator, out / args.generator, n=args.n, size=args.size, seed=args.seed, image_format=args.format or "png",
                )
                print(f"dataset: {folder}")
            staged.replace(grid)
            print(f"grid: {grid}")
    finally:
        with contextlib.suppress(OSError):  # absent, or --out is no folder
            staged.unlink()
        generator.close()
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from harness.device import default_device
    from harness.runner.context import RunContext
    from harness.config.registry import use_registry

    registry = use_registry(args.registry)
    encoder = registry.create("encoder", args.encoder)
    encoder.prepare(RunContext(registry=registry, device=args.device or default_device()))
    print(f"prepared encoder {encoder.name} (key {encoder.key})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """0 when the two encoders' weights are bit-identical, 1 when they differ."""
    from harness.compare import compare_encoders
    from harness.config.registry import use_registry

    report, same = compare_encoders(use_registry(args.registry), args.encoder_a, args.encoder_b, images=args.images, device=args.device)
    print(report)
    return 0 if same else 1


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from harness.results.leaderboard import render_leaderboard
    from harness.results.store import output_errors
    from harness.config.registry import use_registry

    use_registry(args.registry)
    out_dir = Path(args.out)
    if not (out_dir / "results.jsonl").is_file():
        raise HarnessError(f"{out_dir}: no results.jsonl to render; `harness run --out {out_dir}` writes one")
    with output_errors(out_dir / "LEADERBOARD.md"):
        print(render_leaderboard(out_dir))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench.report import merge_reports, run_benchmarks
    from harness.config.registry import use_registry

    registry = use_registry(args.registry)
    if args.merge:
        targets = registry.profile(args.profile).bench.targets if args.profile else []
        print(merge_reports(Path(args.report), Path(args.merge), targets))
        return 0
    print(run_benchmarks(registry, args.stages, Path(args.report), quick=args.quick, profile=args.profile,
                         time_limit_s=args.time_limit))
    return 0


def parse_limit(text: str) -> int | float:
    from harness.datasets.subsets import parse_limit as parse

    return parse(text)


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _integer_from(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the option when it is not)."""
    return _integer_from(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _integer_from(text, 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark encoders trained on procedural data, with a visual memory of real images.",
    )
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    parser.add_argument("--registry", help="registry.yaml to lay over the installed one (default: $HARNESS_REGISTRY, ./registry.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="every plugin and instance, by kind")
    p.add_argument("pattern", nargs="?", help="shell-style glob, e.g. 'dino-*'; an exact name also prints its parameters")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="run encoders x tasks and write the leaderboard")
    p.add_argument("--profile", help="named selection in registry.yaml (default: default)")
    p.add_argument("--encoders", help="'all' or comma-separated encoder instances")
    p.add_argument("--tasks", help="'all' or comma-separated task instances")
    p.add_argument("--generators", help="generators to draw sample grids of; a profile that compares generators "
                   "(`ranking`) adds them to its own and trains one encoder per generator and seed")
    p.add_argument("--scale", type=positive_float, default=1.0, help="with a profile that compares generators: F times "
                   "every training budget (steps and images), as encoders named '-xF'; --dry-run prices it")
    p.add_argument("--out", default="leaderboard", help="output directory (default: leaderboard)")
    p.add_argument("--force", action="store_true", help="recompute cells already in results.jsonl")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="of --limit's subsets and the generators' sample grids (default: 0); "
                   "an encoder's training seed is its `seed` parameter")
    p.add_argument("--limit", type=parse_limit, help="N images per split, or a fraction (0.1), of each classification dataset: "
                   "a stratified subset seeded by --seed, the same for every encoder, part of the cell keys")
    p.add_argument("--threads", type=positive_int, help="torch and BLAS threads, fixed for the whole run (default: one per core); "
                   "the same command with the same thread count gives the same values")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local", help="run cells here, or as Slurm jobs via submitit")
    p.add_argument("--dry-run", action="store_true", help="print the cells, jobs, datasets and expected GPU-hours; run nothing")
    slurm = p.add_argument_group("slurm (override registry.yaml's slurm section)")
    slurm.add_argument("--partition", help="the jobs' Slurm partition")
    slurm.add_argument("--train-gpus", type=non_negative_int, help="GPUs of a training job (one node, DDP over them)")
    slurm.add_argument("--eval-gpus", type=non_negative_int, help="GPUs of an evaluation job (0: CPU jobs)")
    slurm.add_argument("--mem-gb", type=positive_int, help="memory of a job, GB")
    slurm.add_argument("--cluster", choices=["slurm", "local", "debug"], help="submitit executor (default: slurm when sbatch exists)")
    slurm.add_argument("--embed-rate", type=float, help="images/s per GPU for embedding, for --dry-run (default: harness bench's)")
    slurm.add_argument("--train-rate", type=float, help="images/s per GPU for training, for --dry-run (default: harness bench's)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("generate", help="write a sample grid (and optionally a dataset) of a generator")
    p.add_argument("generator", help="a generator instance or plugin (harness list)")
    p.add_argument("--n", type=positive_int, default=64, help="images (default: 64)")
    p.add_argument("--size", type=positive_int, default=128, help="side in pixels (default: 128)")
    p.add_argument("--out", required=True, help="folder of the grid (and of the dataset)")
    p.add_argument("--seed", type=int, default=0, help="image i of a seed is the same at any --n (default: 0)")
    p.add_argument("--dataset", action="store_true", help="also write an ImageFolder of images 0..n-1 (resumable)")
    p.add_argument(
        "--format", choices=["png", "jpeg"],
        help="with --dataset, its files: png (lossless, the default) or jpeg (quality 75, as the released research code stores them)",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="train or prepare one encoder (torchrun for several GPUs)")
    p.add_argument("encoder", help="an encoder instance (harness list); one that trains is trained, or its weights loaded from the cache")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="are two encoders the same weights? tensor by tensor, then their features (exit 1: they differ)")
    p.add_argument("encoder_a")
    p.add_argument("encoder_b")
    p.add_argument("--images", type=positive_int, default=64, help="seeded images whose global features are compared (default: 64)")
    p.add_argument("--device", default="cpu", help="where both encoders run (default: cpu, in float32)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("leaderboard", help="re-render LEADERBOARD.md from results.jsonl")
    p.add_argument("--out", default="leaderboard")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("bench", help="throughput of each stage, written to PERFORMANCE.md")
    p.add_argument("stages", nargs="*", help="generators, embed, train, memory, end-to-end, profile (default: all but profile; end-to-end where the profile names one)")
    p.add_argument("--report", default="leaderboard/PERFORMANCE.md", help="the report written (default: leaderboard/PERFORMANCE.md; "
                   "its rows go to performance.json beside it)")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--profile", help="the profile whose generators and encoders are measured (default: bench, else default)")
    p.add_argument("--time-limit", type=positive_float, metavar="SECONDS",
                   help="stop each stage after this many seconds; the rows it measured are kept, the stage marked cut off")
    p.add_argument("--merge", metavar="PERFORMANCE_JSON", help="measure nothing: add another run's stages (a GPU machine's "
                   "performance.json) to the report's and re-render it, with --profile's targets")
    p.set_defaults(func=cmd_bench)

    from harness.memory.cli import add_memory_parser

    add_memory_parser(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a scheduler's time limit), raised where Ctrl-C would be."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Any:
    """Within the block, SIGTERM stops a local run as Ctrl-C does: the cells that ended are
    kept, and the manifest and leaderboard say the run was interrupted."""

    def stop(signum: int, frame: object) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: SIGTERM keeps its handler
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _what_an_interrupted_run_kept(stop: KeyboardInterrupt, args: argparse.Namespace) -> str:
    """After Ctrl-C or SIGTERM: what `harness run` saved and how to go on (nothing to say
    elsewhere)."""
    from harness.runner.cells import RunInterrupted

    if not isinstance(stop, RunInterrupted):
        return ""
    if stop.cells_done:
        return (f"; every cell had ended and is in results.jsonl, but LEADERBOARD.md may be out of date: "
                f"`harness leaderboard --out {args.out}` renders it")
    rerun = "the same command without --force" if args.force else "the same command"
    return f"; the cells that finished are in results.jsonl and the leaderboard, and {rerun} computes the rest"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "device", None) is not None and args.command != "run":  # a run checks its own (Runner.run)
            from harness.runner.cells import check_device

            check_device(args.device)
        return args.func(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated) or isinstance(stop.__cause__, Terminated)
        print(("terminated (SIGTERM)" if terminated else "interrupted") + _what_an_interrupted_run_kept(stop, args), file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # the reader stopped early (`harness list | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush raises no second error
        return 1


if __name__ == "__main__":
    sys.exit(main())
