"""Where a workload's compiled kernels are cached: one place for its trials and for production.

torch.compile on a CPU builds C++ kernels (tens of seconds for a small model
on two cores) and on a GPU Triton kernels; inductor and Triton cache them on
disk.  A workload's trials share one cache, so only its first compiled trial
pays for the build.  ``dstune.apply`` points a production process at the same
cache, so a job started on the machine that tuned it compiles from the kernels
its trials built.  A cache the user chose (``TORCHINDUCTOR_CACHE_DIR``,
``TRITON_CACHE_DIR``) is left as it is.
"""

from __future__ import annotations

import os
from pathlib import Path


def compile_cache_env(workload: str) -> dict[str, str]:
    """The cache variables to set for ``workload``: those the environment does not set already."""
    root = Path(os.environ.get("DSTUNE_CACHE_DIR", Path.home() / ".cache" / "dstune")) / workload
    env = {}
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    if "TRITON_CACHE_DIR" not in os.environ:
        env["TRITON_CACHE_DIR"] = str(root / "triton")
    return env
