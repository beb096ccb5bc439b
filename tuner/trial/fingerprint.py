"""The environment a run measured in: GPU, driver, CUDA, cuDNN, torch, dstune, plugins, workload source.

Taken in the probe process (the parent never initialises CUDA).  A change in
any of these can change what is fastest, so every iteration stores its
fingerprint and later iterations compare against it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import socket
import sys
from pathlib import Path
from typing import Any

import pluggy

from dstune.plugin_manager import plugin_version

from .gpu_monitor import driver_version


def source_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def environment_facts(pm: pluggy.PluginManager, workload_file: str | Path) -> dict[str, Any]:
    """Read in the probe process; the parent, which only hashes and compares facts, never imports torch here."""
    import torch

    from dstune.version import __version__

    cuda = torch.cuda.is_available()
    facts: dict[str, Any] = {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "driver": driver_version() if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "dstune": __version__,
        "plugins": {name: plugin_version(pm, name) for name, _ in pm.list_name_plugin() if name},
        "workload_source": source_hash(workload_file),
        "executable": sys.executable,
    }
    return facts


def fingerprint_hash(facts: dict[str, Any]) -> str:
    """A stable hash of the facts that can change performance (not host name or path)."""
    relevant = {k: v for k, v in facts.items() if k not in ("host", "executable")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
