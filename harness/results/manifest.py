"""The run manifest: `<out>/runs/<timestamp>.json`, what a run was and what it ran on.

It holds the command line, the harness's git revision (and whether the checkout had
uncommitted changes) when it runs from a checkout, the versions of the libraries that
compute the numbers, the machine (GPU and driver, or CPU model) with the thread counts
the run used, and the cells it computed and reused. The leaderboard links the newest.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cache import atomic_write
from harness.version import __version__

if TYPE_CHECKING:
    from harness.results.store import Result

RUNS = "runs"
LIBRARIES = ("torch", "torchvision", "timm", "faiss-cpu", "faiss-gpu-cu12", "numpy", "scipy", "scikit-learn", "moderngl", "pydantic")


def git_revision(folder: Path) -> dict[str, Any] | None:
    """{"revision", "dirty"} of the git checkout holding `folder`, or None outside one."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"revision": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict[str, Any]:
    """The processor the run computed on, and its thread settings."""
    import torch
    from threadpoolctl import threadpool_info

    described: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "blas": [
            {"library": pool.get("internal_api"), "threads": pool.get("num_threads"), "kernel": pool.get("architecture")}
            for pool in threadpool_info()
        ],
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        described["gpu"] = torch.cuda.get_device_name(0)
        described["cuda"] = torch.version.cuda
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            described["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            described["driver"] = None
    return described


def _cells(records: list[Result]) -> list[dict[str, Any]]:
    cells: dict[str, dict[str, Any]] = {}
    for record in records:
        cells.setdefault(
            record.cell_key,
            {"cell": record.cell_key, "encoder": record.encoder, "task": record.task, "dataset": record.dataset, "status": record.status},
        )
    return list(cells.values())


def command_line(argv: list[str]) -> list[str]:
    """The command as the user typed it: `harness ...` for the command line (however the
    interpreter was started), the script's file name otherwise; no folder of this machine."""
    program = Path(argv[0]).name if argv else "python"
    if program in ("harness", "__main__.py"):
        program = "harness"
    return [program, *argv[1:]]


def write_manifest(
    out_dir: Path, device: str, computed: list[Result], reused: list[Result], argv: list[str] | None = None,
    limit: int | float | None = None, seed: int = 0, interrupted: bool = False,
) -> Path:
    """Write `<out>/runs/<UTC timestamp>.json` and return its path. An `interrupted` run
    (Ctrl-C, or SIGTERM to `harness run`) says so; its `computed` cells are those that ended before it stopped."""
    now = _dt.datetime.now(_dt.timezone.utc)
    manifest = {
        "written": now.isoformat(timespec="seconds"),
        "command": command_line(sys.argv if argv is None else argv),
        "harness": __version__,
        "git": git_revision(Path(__file__).resolve().parent),
        "libraries": library_versions(),
        "machine": machine(device),
        "seed": seed,
        "limit": limit,
        **({"interrupted": True} if interrupted else {}),
        "computed": _cells(computed),
        "reused": _cells(reused),
    }
    path = Path(out_dir) / RUNS / f"{now.strftime('%Y%m%dT%H%M%S%fZ')}.json"
    text = json.dumps(manifest, indent=1, default=str)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def manifest_says_interrupted(path: Path) -> bool:
    """Whether the run that wrote this manifest was interrupted (an unreadable one: no)."""
    try:
        return json.loads(path.read_text()).get("interrupted", False) is True
    except (OSError, ValueError, AttributeError):
        return False


def newest_manifest(out_dir: Path) -> Path | None:
    found = sorted((Path(out_dir) / RUNS).glob("*.json"))
    return found[-1] if found else None
