"""`harness memory build|remove|audit`: the command line over `harness.memory.files`."""

from __future__ import annotations

import argparse
from typing import Any

from harness.memory.files import audit, build_memory, remove_ids


UNITS = {
    "top1": "%", "non_private_fraction": "% of the memory",
    "seconds": "s", "seconds_to_unlearn": "s", "seconds_to_rebuild": "s", "k_used": "(the whole memory: k is above its size)",
}


def _print_summary(summary: dict[str, Any], keys: list[str]) -> None:
    for key in keys:
        if summary.get(key) is not None:
            value = summary[key]
            if isinstance(value, float):
                value = f"{value:.4g}"
            print(f"{key}: {value}" + (f" {UNITS[key]}" if key in UNITS else ""))


def _registry_option(args: argparse.Namespace) -> str | None:
    return getattr(args, "registry", None)


def cmd_memory_build(args: argparse.Namespace) -> int:
    summary = build_memory(args.encoder, args.dataset, args.split, args.out, registry=_registry_option(args), device=args.device)
    _print_summary(summary, ["path", "rows", "dim", "encoder", "encoder_group", "dataset", "split", "seconds"])
    return 0


def cmd_memory_remove(args: argparse.Namespace) -> int:
    summary = remove_ids(
        args.memory, args.ids, args.out, verify=args.verify, queries=args.queries, k=args.k, vote=args.vote,
        temperature=args.temperature, registry=_registry_option(args), device=args.device,
    )
    _print_summary(summary, ["path", "requested", "removed", "rows_before", "rows_after", "seconds_to_unlearn"])
    if summary["missing"]:
        shown = ", ".join(map(str, summary["missing"][:10]))
        print(f"not in the memory ({len(summary['missing'])}): {shown}{' ...' if len(summary['missing']) > 10 else ''}")
    check = summary.get("verification")
    if check is not None:
        _print_summary(
            check,
            ["queries", "num_queries", "rebuilt_from", "identical", "differing_predictions", "seconds_to_rebuild"],
        )
    if summary["path"] is None:
        print(f"nothing written: the reduced memory answers differently from the rebuild; {args.out} is untouched")
        return 1
    print(summary["note"])
    return 0


def cmd_memory_audit(args: argparse.Namespace) -> int:
    summary = audit(
        args.memory, args.queries, args.k, args.vote, args.temperature,
        out_path=args.out, registry=_registry_option(args), device=args.device,
    )
    _print_summary(
        summary,
        ["queries", "num_queries", "memory_size", "k", "k_used", "vote", "top1", "non_private_count", "non_private_fraction",
         "changed_queries", "seconds", "path"],
    )
    return 0


def add_memory_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `memory build|remove|audit` to the `harness` command line's subparsers."""
    memory = subparsers.add_parser("memory", help="build a visual memory, unlearn ids from it, audit its privacy")
    commands = memory.add_subparsers(dest="memory_command", required=True)

    def query_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--queries", help="a split of the memory's dataset (default: test), or a .npy/.npz of query features")
        p.add_argument("--k", type=int, default=20, help="neighbours per vote (default: 20)")
        p.add_argument(
            "--vote", choices=["weighted", "majority"], default="weighted", help="DINO's weighted vote or a majority count"
        )
        p.add_argument("--temperature", type=float, default=0.07, help="for the weighted vote (default: 0.07)")
        p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")

    p = commands.add_parser("build", help="embed a dataset split with an encoder and save it as a memory")
    p.add_argument("encoder")
    p.add_argument("dataset")
    p.add_argument("--split", default="train", help="default: train")
    p.add_argument("--out", required=True, help="the memory file to write (.npz)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=cmd_memory_build)

    p = commands.add_parser("remove", help="unlearn the ids listed in a file (one integer per line)")
    p.add_argument("memory", help="a memory file written by `harness memory build`")
    p.add_argument("--ids", required=True, help="file of ids to remove, one decimal integer per line (`#` comments allowed)")
    p.add_argument(
        "--out", required=True,
        help="the reduced memory file to write; it may be the memory file itself (or a symlink to it) only with "
        "--verify, and not while other hard links to it exist",
    )
    p.add_argument(
        "--verify", action="store_true",
        help="before writing, check every answer against a memory rebuilt from the original rows without the ids; "
        "when any differs, nothing is written (exit status 1)",
    )
    query_options(p)
    p.set_defaults(func=cmd_memory_remove)

    p = commands.add_parser("audit", help="the rows whose removal changes a query's prediction (non-private)")
    p.add_argument("memory", help="a memory file")
    p.add_argument("--out", help="write the non-private ids here, one per line")
    query_options(p)
    p.set_defaults(func=cmd_memory_audit)
    return memory
