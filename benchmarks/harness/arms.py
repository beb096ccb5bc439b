"""The arms of the benchmark: how each one arrives at the configuration it is measured with.

- ``default``: the workload as written (every knob at PyTorch's default).
- ``checklist``: the PyTorch performance tuning guide applied by hand, as
  written below (not read from dstune's knobs), with the largest
  power-of-two micro-batch that fits.
- ``lightning`` / ``accelerate``: the batch size their finders pick, all else default.
- ``dstune``: ``dstune run`` with a budget, on a database and compile cache
  of its own; its applied configuration.
- ``oracle``: see :mod:`benchmarks.harness.oracle`.

The finders run in processes of their own (:mod:`benchmarks.harness.finders`),
so the libraries' state never reaches the measuring process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import REPO
from .trials import Bench

# The tuning guide's recommendations, by knob; each applies only where the knob does.
CHECKLIST: dict[str, Any] = {
    "precision": "bf16",              # mixed precision with autocast (bf16 on Ampere and later)
    "matmul_precision": "high",       # TF32 for fp32 matrix products
    "memory_format": "channels_last",  # convolutional networks
    "cudnn_benchmark": True,
    "optimizer_impl": "fused",
    "compile": "default",
    "loader_workers": 4,              # "num_workers > 0"; 4 per GPU, as PyTorch's ImageNet example
    "pin_memory": True,
    "persistent_workers": True,
}
FINDER_TIMEOUT_S = 900.0


@dataclass
class Arm:
    """One arm: its configuration, what it cost to find, and notes on how it got there."""

    name: str
    config: dict[str, Any]
    tuning_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    failed: str | None = None  # why the arm has no configuration to measure

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config, "tuning_s": round(self.tuning_s, 1),
                "notes": self.notes, "details": self.details, "failed": self.failed}


def run_finder(kind: str, spec: dict[str, Any], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run one finder in a fresh interpreter; its output goes to ``log``, its answer is returned."""
    with tempfile.TemporaryDirectory(prefix=f"dstune-bench-{kind}-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        with log.open("ab") as out:
            out.write(f"\n--- finder {kind} ---\n".encode())
            out.flush()
            proc = subprocess.run([sys.executable, "-m", "benchmarks.harness.finders", kind, str(spec_path),
                                   str(out_path)], cwd=REPO, env={**os.environ, **env}, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=FINDER_TIMEOUT_S, check=False)
        if proc.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"finder {kind} exited with code {proc.returncode}; its output is in {log}")
        return json.loads(out_path.read_text())


def _finder_spec(bench: Bench, **extra: Any) -> dict[str, Any]:
    return {"ctx": bench.ctx_dict, "workload_file": str(bench.options.workload_file),
            "workload_name": bench.workload, **extra}


def micro_batch_for(bench: Bench, found: int) -> tuple[int, str | None]:
    """The micro-batch a found batch size maps to, and a note when it differs from it.

    With a global batch, a finder's answer is the most samples one step can
    hold; the training keeps its global batch, so the micro-batch is the
    largest power-of-two divisor of the global batch not above the answer.
    """
    g = bench.ctx.global_batch_size
    if not g:
        return found, None
    micro = 1
    while micro * 2 <= min(found, g) and g % (micro * 2) == 0:
        micro *= 2
    if micro != found:
        return micro, f"found {found}; micro-batch {micro} (global batch {g} kept by accumulation)"
    return micro, None


def default_arm(bench: Bench) -> Arm:
    return Arm("default", dict(bench.default))


def checklist_arm(bench: Bench, env: dict[str, str], log: Path, cap: int | None = None) -> Arm:
    """The guide's settings by hand, then the largest power-of-two micro-batch that fits them."""
    overrides = {k: v for k, v in CHECKLIST.items() if bench.knob(k) is not None and v in bench.knob(k).choices}
    config, _ = bench.complete(overrides)
    arm = Arm("checklist", config)
    if bench.knob("batch_size") is None:
        return arm
    spec = _finder_spec(bench, config=config, **({"cap": cap} if cap else {}))
    started = time.perf_counter()
    found = run_finder("pow2", spec, env, log)
    arm.tuning_s = time.perf_counter() - started
    arm.details = found
    if found.get("batch_size") is None:
        arm.failed = f"no power-of-two micro-batch fits (tried {found.get('tried')})"
        return arm
    arm.config["batch_size"] = int(found["batch_size"])
    return arm


def finder_arm(bench: Bench, kind: str, env: dict[str, str], log: Path) -> Arm:
    """Lightning's or Accelerate's batch size, everything else at its default."""
    arm = Arm(kind, dict(bench.default))
    if bench.knob("batch_size") is None:
        arm.failed = "the workload has no batch-size knob"
        return arm
    extra: dict[str, Any] = {}
    if kind == "accelerate":
        # Accelerate only halves: it starts from the largest batch the training would use.
        extra["starting_batch_size"] = max(bench.knob("batch_size").choices)
    started = time.perf_counter()
    try:
        found = run_finder(kind, _finder_spec(bench, **extra), env, log)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        arm.failed = str(exc)
        return arm
    arm.tuning_s = time.perf_counter() - started
    arm.details = found
    if not found.get("batch_size"):
        arm.failed = f"{kind} found no batch size that fits"
        return arm
    micro, note = micro_batch_for(bench, int(found["batch_size"]))
    arm.config["batch_size"] = micro
    if note:
        arm.notes.append(note)
    return arm


def dstune_arm(bench: Bench, budget: str, db: Path, env: dict[str, str], log: Path,
               extra_args: tuple[str, ...] = ()) -> Arm:
    """``dstune run`` as a user runs it, then the configuration it applied (``dstune show --json``)."""
    command = [sys.executable, "-m", "dstune", "run", str(bench.options.workload_file), "--db", f"sqlite:///{db}",
               "--budget", budget, *extra_args]
    if bench.options.workload_name:
        command[4:4] = ["--workload", bench.options.workload_name]
    if bench.options.world_size > 1:
        command[4:4] = ["--world-size", str(bench.options.world_size)]
    started = time.perf_counter()
    with log.open("ab") as out:
        out.write(f"\n--- {' '.join(command)} ---\n".encode())
        out.flush()
        proc = subprocess.run(command, env={**os.environ, **env, "COLUMNS": "160"}, stdout=out,
                              stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - started
    arm = Arm("dstune", dict(bench.default), tuning_s=wall,
              details={"command": "dstune run " + " ".join(command[4:]), "exit_code": proc.returncode})
    if proc.returncode != 0:
        arm.failed = f"dstune run exited with code {proc.returncode}; see {log}"
        return arm
    shown = subprocess.run([sys.executable, "-m", "dstune", "show", bench.workload, "--db", f"sqlite:///{db}",
                            "--json"], env={**os.environ, **env}, capture_output=True, text=True, check=False)
    record = json.loads(shown.stdout or "{}")
    applied = record.get("applied")
    if applied:
        arm.config = {**bench.default, **applied["config"]}
        arm.details["applied_reason"] = applied.get("reason")
    else:
        arm.notes.append("no configuration applied: the default stays")
    return arm

