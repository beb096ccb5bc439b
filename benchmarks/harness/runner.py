"""One benchmark run of one workload: every arm, then the side-by-side rounds, then the JSON and table.

The stages run in this order: dstune first, on a compile cache of its own
that starts empty (as on a new machine), then the default, the batch
finders, the checklist and the oracle, which share another cache, then the
rounds.  The state is saved after every stage, so a run cut short (a device
call has a time limit) resumes where it stopped with ``--resume``.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from dstune.trial.measure_settings import MeasureSettings

from .arms import Arm, checklist_arm, default_arm, dstune_arm, finder_arm, run_finder
from .compare import side_by_side
from .oracle import best_point, run_oracle, set_aside
from .registry import REPO, BenchWorkload
from .report import markdown
from .trials import Bench, cache_env

ALL_ARMS = ("dstune", "default", "lightning", "accelerate", "checklist", "oracle")


@dataclass
class RunSettings:
    arms: tuple[str, ...] = ALL_ARMS
    budget: str = "15m"
    rounds: int = 3
    dstune_args: tuple[str, ...] = ()
    reuse_oracle: bool = True
    resume: bool = False
    checklist_cap: int | None = None
    max_warmup_s: float | None = None  # dstune's default (60 s) unless given
    windows: int | None = None  # timed windows per measurement; dstune's default unless given
    window_s: float | None = None  # seconds per timed window; dstune's default unless given

    def measure(self) -> MeasureSettings | None:
        """The measurement settings the arms are timed with, or None for dstune's defaults."""
        given = {k: v for k, v in (("max_warmup_s", self.max_warmup_s), ("windows", self.windows),
                                   ("window_s", self.window_s)) if v is not None}
        return MeasureSettings(**given) if given else None


def dstune_commit() -> str | None:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=False)
    return proc.stdout.strip() or None


def machine_facts(bench: Bench, env: dict[str, str], log: Path) -> dict[str, Any]:
    facts = {k: bench.environment.get(k) for k in ("gpu", "gpu_count", "driver", "cuda", "cudnn", "torch",
                                                    "python", "dstune", "platform")}
    facts["cpu_count"] = bench.ctx.cpu_count
    facts["device_memory_bytes"] = bench.ctx.device_memory
    if bench.ctx.is_cuda:
        facts["bf16_matmul_flops"] = run_finder("peak", {}, env, log)["bf16_matmul_flops"]
    return facts


class BenchmarkRun:
    """The stages of one workload's benchmark, with the state saved between them."""

    def __init__(self, spec: BenchWorkload, out: Path, results: Path, settings: RunSettings,
                 say: Callable[[str], None] = print) -> None:
        self.spec, self.out, self.results, self.settings, self.say = spec, out, results, settings, say
        out.mkdir(parents=True, exist_ok=True)
        self.log = out / "harness.log"
        self.state_path = out / "state.json"
        self.state: dict[str, Any] = (json.loads(self.state_path.read_text())
                                      if settings.resume and self.state_path.exists() else {})
        self.shared_env = cache_env(out / "cache-shared")
        self.bench = Bench(spec.file, workdir=None, env=self.shared_env, measure=settings.measure(),
                           world_size=spec.world_size)

    def _save(self) -> None:
        self.state_path.write_text(json.dumps(self.state, indent=1, default=str))

    def _stage(self, name: str, work: Callable[[], Any]) -> Any:
        if name in self.state:
            self.say(f"{name}: taken from the saved state")
            return self.state[name]
        started = time.perf_counter()
        self.say(f"{name}: starting")
        value = work()
        self.state[name] = value
        self._save()
        self.say(f"{name}: done in {time.perf_counter() - started:.0f} s")
        return value

    def _arm(self, name: str) -> Arm:
        bench, env, log = self.bench, self.shared_env, self.log
        if name == "dstune":
            return dstune_arm(bench, self.settings.budget, self.out / "dstune.db", cache_env(self.out / "cache-dstune"),
                              log, self.settings.dstune_args)
        if name == "default":
            return default_arm(bench)
        if name in ("lightning", "accelerate"):
            return finder_arm(bench, name, env, log)
        if name == "checklist":
            return checklist_arm(bench, env, log, self.settings.checklist_cap)
        raise ValueError(name)

    def _scaling(self, config: dict[str, Any]) -> dict[str, Any]:
        """Scaling efficiency of ``config``: its samples/s on the N ranks over N times its samples/s on one
        (the same per-rank micro-batch, accumulating the whole global batch), interleaved over the rounds."""
        one = Bench(self.spec.file, env=self.shared_env, measure=self.settings.measure(), world_size=1)
        world = self.spec.world_size
        pairs = []
        for i in range(max(1, self.settings.rounds)):
            many = self.bench.measure(f"{world} ranks, round {i + 1}", config, self.shared_env)
            single = one.measure(f"1 rank, round {i + 1}", config, self.shared_env)
            self.say(f"scaling round {i + 1}: {world} ranks {many.status} {many.metrics.get('samples_per_s')}, "
                     f"1 rank {single.status} {single.metrics.get('samples_per_s')}")
            if many.status == single.status == "ok":
                pairs.append((many.metrics["samples_per_s"], single.metrics["samples_per_s"]))
        if not pairs:
            return {"world_size": world, "error": "the configuration did not run on both"}
        ratios = sorted(a / (world * b) for a, b in pairs)
        return {"world_size": world, "config": config, "pairs_samples_per_s": pairs,
                "efficiency_median": ratios[len(ratios) // 2], "efficiency_range": [ratios[0], ratios[-1]]}

    def run(self) -> dict[str, Any]:
        started = datetime.now(timezone.utc)
        machine = self._stage("machine", lambda: machine_facts(self.bench, self.shared_env, self.log))
        arms: list[Arm] = []
        oracle = None
        for name in self.settings.arms:
            if name == "oracle":
                oracle = self._stage("oracle", lambda: run_oracle(self.bench, self.spec, self.results,
                                                                  self.shared_env, self.say,
                                                                  self.settings.reuse_oracle))
                points = oracle.get("points", [])
                best = best_point(points)  # by today's rule, for a cache or a saved state written before it
                arms.append(Arm("oracle", best["config"], tuning_s=oracle.get("grid_s") or 0.0,
                                notes=[f"best of {len(points)} grid points ({oracle['source']})", *set_aside(points)])
                            if best else Arm("oracle", {}, failed="no grid point ran"))
                continue
            record = self._stage(f"arm {name}", lambda: self._arm(name).to_dict())
            arm = Arm(**{k: record[k] for k in ("name", "config", "tuning_s", "notes", "details", "failed")})
            if arm.failed:
                self.say(f"arm {name}: {arm.failed}")
            arms.append(arm)
        figures = self._stage("rounds", lambda: side_by_side(self.bench, arms, self.settings.rounds,
                                                             self.shared_env, self.say))
        chosen = next((a for a in arms if a.name == "dstune" and not a.failed and a.config), None)
        scaling = (self._stage("scaling", lambda: self._scaling(chosen.config))
                   if self.spec.world_size > 1 and chosen is not None else None)
        result = {
            "workload": self.spec.name,
            "mode": self.bench.ctx.mode,
            "param_count": self.bench.ctx.param_count,
            "world_size": self.bench.ctx.world_size,
            "scaling": scaling,
            "date": started.isoformat(timespec="seconds"),
            "machine": machine,
            "dstune_commit": dstune_commit(),
            "settings": {"arms": list(self.settings.arms), "budget": self.settings.budget,
                         "rounds": self.settings.rounds, "dstune_args": list(self.settings.dstune_args),
                         "measure": self.bench.options.measure.to_dict()},
            "default_config": self.bench.default,
            "arms": [a.to_dict() for a in arms],
            "figures": figures,
            "flops_per_sample": self.spec.flops_per_sample(self.bench.ctx_dict) if self.spec.flops_per_sample else None,
            "oracle": ({k: oracle.get(k) for k in ("source", "date", "grid_s", "cache_file", "notes", "space")}
                       | {"points": len(oracle.get("points", []))}) if oracle else None,
        }
        result["table"] = markdown(result)
        return result
