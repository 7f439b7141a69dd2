"""The `harness` command line. Heavy libraries are imported inside each command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import __version__
from harness.errors import HarnessError


def cmd_list(args: argparse.Namespace) -> int:
    from harness.registry import use_registry

    registry = use_registry(args.registry)
    print(f"registry: {registry.path}")
    for kind in ("generator", "encoder", "task"):
        print(f"\n{kind}s")
        plugins = registry.plugins.classes[kind]
        for name in sorted(plugins):
            if args.pattern and not _matches(name, args.pattern):
                continue
            doc = (plugins[name].cls.__doc__ or "").strip().splitlines()[0:1]
            print(f"  plugin   {name:<22} {doc[0] if doc else ''}  [{plugins[name].source}]")
        for name, spec in registry.section(kind).items():
            if args.pattern and not _matches(name, args.pattern):
                continue
            state = "" if spec.plugin in plugins else "  (plugin not loaded)"
            print(f"  instance {name:<22} -> {spec.plugin} {spec.params}{state}")
    print("\nprofiles")
    for name, profile in registry.config.profiles.items():
        print(f"  {name}: encoders={profile.encoders} tasks={profile.tasks}")
    if registry.plugins.broken:
        print("\nbroken plugins (not loaded)")
        for broken in registry.plugins.broken:
            print(f"  {broken.source}: {broken.error}")
    return 0


def _matches(name: str, pattern: str) -> bool:
    from fnmatch import fnmatch

    return fnmatch(name, pattern)


def cmd_run(args: argparse.Namespace) -> int:
    from harness.registry import use_registry
    from harness.runner import Runner

    registry = use_registry(args.registry)
    for option in ("partition", "train_gpus", "eval_gpus", "mem_gb"):
        if getattr(args, option) is not None:
            setattr(registry.config.slurm, option, getattr(args, option))
    runner = Runner(registry, out_dir=Path(args.out), device=args.device, force=args.force, seed=args.seed)
    plan = runner.select(args.profile, args.encoders, args.tasks, args.generators)
    if args.dry_run:
        from harness.dryrun import describe_plan

        print(describe_plan(runner, plan, args.launcher, embed_images_per_s=args.embed_rate, train_images_per_s=args.train_rate))
        return 0
    if args.launcher == "slurm":
        from harness.launch import SlurmLauncher

        produced = SlurmLauncher(runner, registry.config.slurm, cluster=args.cluster).run(plan)
    else:
        produced = runner.run(plan)
    from harness.runner import exit_status

    return exit_status(produced)


def cmd_generate(args: argparse.Namespace) -> int:
    from harness.registry import use_registry
    from harness.streaming import write_grid, write_imagefolder

    registry = use_registry(args.registry)
    generator = registry.create("generator", args.generator)
    out = Path(args.out)
    grid = write_grid(generator, out / f"{args.generator}_grid.png", n=min(args.n, 64), size=args.size, seed=args.seed)
    print(f"grid: {grid}")
    if args.dataset:
        folder = write_imagefolder(generator, out / args.generator, n=args.n, size=args.size, seed=args.seed)
        print(f"dataset: {folder}")
    generator.close()
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from harness.context import RunContext, default_device
    from harness.registry import use_registry

    registry = use_registry(args.registry)
    encoder = registry.create("encoder", args.encoder)
    encoder.prepare(RunContext(registry=registry, device=args.device or default_device(), seed=args.seed))
    print(f"prepared encoder {encoder.name} (key {encoder.key})")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from harness.leaderboard import render_leaderboard
    from harness.registry import use_registry

    use_registry(args.registry)
    print(render_leaderboard(Path(args.out)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench import run_benchmarks
    from harness.registry import use_registry

    registry = use_registry(args.registry)
    print(run_benchmarks(registry, args.stages, Path(args.report), quick=args.quick, profile=args.profile))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark encoders trained on procedural data, with a visual memory of real images.",
    )
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    parser.add_argument("--registry", help="registry.yaml to lay over the installed one (default: $HARNESS_REGISTRY, ./registry.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="every plugin and instance, by kind")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'dino-*'")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="run encoders x tasks and write the leaderboard")
    p.add_argument("--profile", help="named selection in registry.yaml (default: default)")
    p.add_argument("--encoders", help="'all' or comma-separated encoder instances")
    p.add_argument("--tasks", help="'all' or comma-separated task instances")
    p.add_argument("--generators", help="generators to draw sample grids of")
    p.add_argument("--out", default="leaderboard", help="output directory (default: leaderboard)")
    p.add_argument("--force", action="store_true", help="recompute cells already in results.jsonl")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--launcher", choices=["local", "slurm"], default="local", help="run cells here, or as Slurm jobs via submitit")
    p.add_argument("--dry-run", action="store_true", help="print the cells, jobs, datasets and expected GPU-hours; run nothing")
    slurm = p.add_argument_group("slurm (override registry.yaml's slurm section)")
    slurm.add_argument("--partition")
    slurm.add_argument("--train-gpus", type=int)
    slurm.add_argument("--eval-gpus", type=int)
    slurm.add_argument("--mem-gb", type=int)
    slurm.add_argument("--cluster", choices=["slurm", "local", "debug"], help="submitit executor (default: slurm when sbatch exists)")
    slurm.add_argument("--embed-rate", type=float, help="images/s per GPU for embedding, for --dry-run (default: harness bench's)")
    slurm.add_argument("--train-rate", type=float, help="images/s per GPU for training, for --dry-run (default: harness bench's)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("generate", help="write a sample grid (and optionally a dataset) of a generator")
    p.add_argument("generator")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", action="store_true", help="also write an ImageFolder of PNGs (resumable)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="train or prepare one encoder (torchrun for several GPUs)")
    p.add_argument("encoder")
    p.add_argument("--device")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("leaderboard", help="re-render LEADERBOARD.md from results.jsonl")
    p.add_argument("--out", default="leaderboard")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("bench", help="throughput of each stage, written to PERFORMANCE.md")
    p.add_argument("stages", nargs="*", help="generators, embed, memory, train (default: all)")
    p.add_argument("--report", default="leaderboard/PERFORMANCE.md")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--profile", help="the profile whose generators and encoders are measured (default: bench, else default)")
    p.set_defaults(func=cmd_bench)

    from harness.unlearning import add_memory_parser

    add_memory_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished cells are saved in results.jsonl", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
