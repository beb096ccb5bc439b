"""The numerics guard: a faster configuration must still compute what the model computes.

Reduced precision, TF32 matmuls, compilation and fused kernels change
results, usually harmlessly.  Before its first step counts, every trial
compares the loss (training) or the output (inference) of its first
micro-batch with an fp32 eager reference: the same weights and the same batch
run before any plugin changed the model, with float32 matmuls at full
precision and no autocast.  The dropout masks match too, because the
reference runs under a copy of the random state.  A relative error beyond
the trial's tolerance makes the trial ``numerics``, which the search treats
as infeasible; so does a NaN or infinity anywhere in the timed window.

For ``batch=`` workloads the reference depends only on the micro-batch
size, so the first trial of each size stores it and later trials of the
iteration load it.  Dataset batches can depend on the loader settings
(random augmentation in workers), so those trials compute their own.

The tolerance of a trial is the largest of a base tolerance and what the
knobs it sets allow (``Knob.tolerance``), each of which the user may change
with ``--tolerance``.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from dstune.errors import UsageError

BASE_KEY = "base"
DEFAULT_BASE_TOLERANCE = 1e-3  # reordered float32 sums, cuDNN algorithm choice, compiled kernels
SIGNATURE_ELEMENTS = 1 << 16  # outputs are compared on at most this many evenly spaced elements


class NumericsError(Exception):
    """The loss or output went NaN or infinite, or strayed from the fp32 eager reference."""


@dataclass(frozen=True)
class GuardSettings:
    """What a trial process needs to guard its numerics; shipped in the trial spec."""

    tolerance: float
    reference_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_tolerances(values: Sequence[str]) -> dict[str, float]:
    """``--tolerance`` values: ``KNOB:VALUE=REL`` (``precision:bf16=0.1``) or ``base=REL``."""
    parsed: dict[str, float] = {}
    for value in values:
        key, sep, rel = value.partition("=")
        key = key.strip()
        try:
            number = float(rel)
        except ValueError:
            number = math.nan
        if not sep or not key or not number >= 0 or (key != BASE_KEY and ":" not in key):
            raise UsageError(
                f"--tolerance {value!r}: give KNOB:VALUE=RELATIVE_ERROR (e.g. precision:bf16=0.1) or "
                f"base=RELATIVE_ERROR (e.g. base=1e-4), with a number >= 0."
            )
        parsed[key] = number
    return parsed


def trial_tolerance(knobs: Sequence[Any], config: Mapping[str, Any], overrides: Mapping[str, float]) -> float:
    """The relative error a trial of ``config`` may show against the reference."""
    tolerance = overrides.get(BASE_KEY, DEFAULT_BASE_TOLERANCE)
    for knob in knobs:
        if knob.name not in config:
            continue
        value = config[knob.name]
        allowed = overrides.get(f"{knob.name}:{value}", knob.tolerance.get(value))
        if allowed is not None:
            tolerance = max(tolerance, allowed)
    return tolerance


def check_overrides(knobs: Sequence[Any], overrides: Mapping[str, float]) -> None:
    """Refuse ``--tolerance`` keys that name no knob value of this run."""
    valid = {f"{k.name}:{c}" for k in knobs for c in k.choices}
    unknown = sorted(key for key in overrides if key != BASE_KEY and key not in valid)
    if unknown:
        examples = ", ".join(sorted(f"{k.name}:{c}" for k in knobs for c in k.tolerance if c in k.choices)[:6])
        raise UsageError(
            f"--tolerance names {', '.join(unknown)}, which is no knob value in this run. Use KNOB:VALUE as "
            f"`dstune plugins` lists them (values with a default tolerance here: {examples or 'none'}), or base."
        )


# No tolerance helps here: the workload itself produces NaN/inf, before any knob touches it.
REFERENCE_NOT_FINITE = ("the workload's loss (or output) is NaN or infinite in the fp32 eager reference itself, "
                        "before any knob changed anything: the workload produces it, not the configuration. Check "
                        "its loss and its batches (a log of zero, a division by zero, uninitialised data)")


def signature(value: Any) -> Any:
    """A small float32 CPU copy of a loss or output: evenly spaced elements, at most SIGNATURE_ELEMENTS."""
    flat = value.detach().reshape(-1).float()
    step = max(1, flat.numel() // SIGNATURE_ELEMENTS)
    return flat[::step][:SIGNATURE_ELEMENTS].cpu().clone()


def relative_error(reference: Any, value: Any) -> float:
    """||value - reference|| / ||reference|| (absolute when the reference is zero); inf for NaN or a shape change."""
    import torch

    if reference.shape != value.shape:
        return math.inf
    diff = float(torch.linalg.vector_norm(value - reference))
    scale = float(torch.linalg.vector_norm(reference))
    error = diff / scale if scale > 0 else diff
    return error if math.isfinite(error) else math.inf


@contextlib.contextmanager
def fp32_eager() -> Iterator[None]:
    """Full-precision float32 matmuls and convolutions, restored afterwards."""
    import torch

    matmul = torch.get_float32_matmul_precision()
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


@dataclass
class Guard:
    """One trial's guard: the reference, then the check of the first micro-batch."""

    settings: GuardSettings
    cache_key: str | None = None  # set when the reference may be shared by trials with this key
    reference: Any = None
    result: dict[str, Any] = field(default_factory=dict)

    def _cache_path(self) -> Path | None:
        if self.settings.reference_dir is None or self.cache_key is None:
            return None
        return Path(self.settings.reference_dir) / f"reference-{self.cache_key}.pt"

    def compute_reference(self, model: Any, run: Callable[[], Any], device: Any) -> None:
        """Run ``run()`` (one forward and loss) on the plain model in fp32, or load it from this iteration's cache.

        The random state, the model's buffers (BatchNorm statistics) and the
        peak-memory counters are as if it had not run.  A reference that does
        not fit in memory is skipped and said so in the trial's metrics.
        """
        import torch

        path = self._cache_path()
        if path is not None and path.exists():
            self.reference = torch.load(path, weights_only=True)
            self.result["numerics_reference"] = "cached"
            return
        buffers = [b.detach().clone() for b in model.buffers()]
        devices = [device] if device.type == "cuda" else []
        grad_off = torch.inference_mode if not model.training else torch.no_grad
        try:
            with torch.random.fork_rng(devices=devices), fp32_eager(), grad_off():
                self.reference = signature(run())
        except torch.OutOfMemoryError:
            self.result["numerics_reference"] = "skipped: the fp32 reference did not fit in memory"
        finally:
            with torch.no_grad():
                for saved, live in zip(buffers, model.buffers()):
                    live.copy_(saved)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
        if self.reference is None:
            return
        if not bool(torch.isfinite(self.reference).all()):
            raise NumericsError(REFERENCE_NOT_FINITE)
        self.result["numerics_reference"] = "computed"
        if path is not None:
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            torch.save(self.reference, tmp)
            os.replace(tmp, path)

    def check(self, value: Any) -> None:
        """Compare the first micro-batch's loss or output with the reference; raise :class:`NumericsError` if off."""
        if self.reference is None or "numerics_error" in self.result:
            return
        error = relative_error(self.reference, signature(value))
        self.result.update(numerics_error=error, numerics_tolerance=self.settings.tolerance)
        if not error <= self.settings.tolerance:
            raise NumericsError(
                f"the first micro-batch's {'loss' if value.numel() == 1 else 'output'} differs from the fp32 eager "
                f"reference by {error:.3g} (relative), over this configuration's tolerance of "
                f"{self.settings.tolerance:g}; raise it with --tolerance if that is acceptable"
            )
