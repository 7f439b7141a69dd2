"""What decides whether the same command gives the same numbers: thread counts and
deterministic kernels, fixed for the whole run.

Reductions split across threads add in an order that depends on the thread count, so a
run pins torch's and every BLAS/OpenMP library's thread count (to `--threads`, default:
torch's own default, the number of cores) and records it in the run manifest; the same
command with the same thread count then gives the same values, whatever else the
machine is doing. torch's deterministic algorithms are switched on (with a warning, not
an error, for the few operations that have none).
"""

from __future__ import annotations

import os


def pin_threads(threads: int | None = None) -> int:
    """Fix the thread counts of torch and of the BLAS/OpenMP libraries; return the count."""
    import torch
    from threadpoolctl import threadpool_limits

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' deterministic mode
    count = int(threads or torch.get_num_threads())
    if count < 1:
        raise ValueError(f"threads must be >= 1, got {count}")
    torch.set_num_threads(count)
    threadpool_limits(count)
    deterministic_kernels()
    return count


def deterministic_kernels() -> None:
    """torch's deterministic algorithms on (warning, not failing, where there is none).

    `torch.use_deterministic_algorithms` also sets torch.compile's (inductor's) flag, and
    importing inductor's config for it costs about a second in every process. Runs do not
    compile: unless inductor is already loaded, only the eager switch is set."""
    import sys

    import torch

    if "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)
