"""The benchmarked workloads: where each lives, its oracle grid, and how to count its FLOPs.

The oracle is an exhaustive grid over a reduced space, written here so that
it is documented and versioned: knobs listed in ``grid`` take every value
given (those a machine does not offer are dropped, with a note), knobs in
``fixed`` take one value, every other knob keeps PyTorch's default.  The
grids are kept small enough to run in one device session: compiled points
cost tens of seconds each.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BenchWorkload:
    """One workload of the benchmark and how the harness treats it."""

    name: str
    file: Path
    grid: dict[str, tuple[Any, ...]]
    fixed: dict[str, Any] = field(default_factory=dict)
    # Model FLOPs of one sample (forward and backward for training), from the probe's context; for MFU.
    flops_per_sample: Callable[[dict[str, Any]], float] | None = None
    note: str = ""
    world_size: int = 1  # data-parallel workloads: ranks per trial (dstune run --world-size), one GPU each
    # Knobs whose values need more memory in this order, the rest equal (the micro-batch; less checkpointing).
    # The oracle measures the smaller first, and a point beyond one that ran out of memory is recorded as out
    # of memory without a run (see benchmarks.harness.oracle.implied_oom).
    memory_order: dict[str, tuple[Any, ...]] = field(default_factory=dict)


def gpt2_flops_per_sample(ctx: dict[str, Any]) -> float:
    """Training FLOPs of one 1024-token sequence of GPT-2 124M: 6N + 12·L·d·T per token.

    N counts the parameters without the position embedding (the token
    embedding is tied to the output layer, whose matrix product is real work);
    12·L·d·T is attention's score and value products, forward and backward
    (Chinchilla's and PaLM's appendix count, as nanoGPT's MFU estimate uses).
    """
    layers, width, seq = 12, 768, 1024
    n = ctx["param_count"] - seq * width
    return (6 * n + 12 * layers * width * seq) * seq


def llama_1b_flops_per_sample(ctx: dict[str, Any]) -> float:
    """Training FLOPs of one 2048-token sequence of ``examples/llama_1b.py``: 6N + 12·L·d·T per token.

    N leaves out the input embedding (a lookup, no matrix product; the output
    layer is not tied to it and counts), as for GPT-2 above.
    """
    layers, width, seq, vocab = 24, 2048, 2048, 32000
    n = ctx["param_count"] - vocab * width
    return (6 * n + 12 * layers * width * seq) * seq


WORKLOADS: dict[str, BenchWorkload] = {
    "resnet50": BenchWorkload(
        name="resnet50",
        file=REPO / "examples" / "resnet50.py",
        # Widened after the H200 runs of 2026-12-02 applied compile=reduce-overhead, outside the first grid, and
        # measured compiled fp16 within 0.3% of bf16.  fp32 left out: on the H100 its best point ran 0.60x the
        # best bf16 one.  Ordered so that a grid cut by a call's limit has measured the likely best first: the
        # channels_last half (contiguous ran at best 0.994x it compiled, 0.56x eager, on the H100).
        grid={"memory_format": ("channels_last", "contiguous"), "precision": ("bf16", "fp16"),
              "compile": ("reduce-overhead", "default", "off"), "batch_size": (256, 128)},
        fixed={"cudnn_benchmark": True, "matmul_precision": "high", "optimizer_impl": "fused"},
        note="24 points, 16 compiled; cuDNN benchmark, TF32 matmuls and the fused optimizer fixed on; fp32 left "
             "out (0.60x bf16 at best on the H100); run with --resume across calls",
    ),
    "gpt2": BenchWorkload(
        name="gpt2",
        file=REPO / "examples" / "gpt2.py",
        # Widened as ResNet-50's: reduce-overhead and fp16 (the search's neighbours) in, fp32 out (0.34x bf16 at
        # best on the H100).
        grid={"precision": ("bf16", "fp16"), "compile": ("default", "reduce-overhead", "off"), "batch_size": (32, 16)},
        fixed={"matmul_precision": "high", "optimizer_impl": "fused"},
        flops_per_sample=gpt2_flops_per_sample,
        note="12 points, 8 compiled; micro-batch 16 or 32 (8, the example's, is slower still); TF32 matmuls and "
             "fused AdamW fixed on; SDPA backend PyTorch's pick; fp32 left out (0.34x bf16 at best on the H100)",
    ),
    "bert_infer": BenchWorkload(
        name="bert_infer",
        file=REPO / "examples" / "bert_infer.py",
        grid={"batch_size": (32, 128, 512, 16384), "precision": ("bf16", "fp16"), "compile": ("off", "default")},
        fixed={"matmul_precision": "high"},
        note="half precision only (on the H100, fp32 was at best 0.46x the best half-precision point of the "
             "first grid); TF32 matmuls fixed on",
    ),
    "llama_1b": BenchWorkload(
        name="llama_1b",
        file=REPO / "examples" / "llama_1b.py",
        # Ordered so that a grid cut by a call's limit has measured the region most likely to hold the best
        # first: bf16, compiled, the larger micro-batches.
        grid={"precision": ("bf16", "fp32"), "compile": ("default", "off"), "batch_size": (32, 16, 8, 4),
              "activation_checkpointing": (False, "every_other", True)},
        fixed={"matmul_precision": "high", "optimizer_impl": "fused"},
        flops_per_sample=llama_1b_flops_per_sample,
        memory_order={"batch_size": (4, 8, 16, 32), "activation_checkpointing": (True, "every_other", False)},
        note="48 points, many out of memory at once (fp32 beyond micro-batch 8); TF32 matmuls and fused AdamW "
             "fixed on; compiled points cost a minute or more each: run it once, with --resume across calls",
    ),
    "llama_1b_dp": BenchWorkload(
        name="llama_1b_dp",
        file=REPO / "examples" / "llama_1b_dp.py",
        grid={"dp_wrapper": ("ddp", "fsdp"), "batch_size": (4, 8, 16), "activation_checkpointing": (False, True),
              "precision": ("fp32", "bf16")},
        fixed={"matmul_precision": "high", "optimizer_impl": "fused", "compile": "off"},
        flops_per_sample=llama_1b_flops_per_sample,
        world_size=2,
        memory_order={"batch_size": (4, 8, 16), "activation_checkpointing": (True, False)},
        note="two ranks, one GPU each; 24 eager points (wrapper x micro-batch per rank x checkpointing x "
             "precision); TF32 matmuls and fused AdamW fixed on; the wrappers' own settings at PyTorch's defaults",
    ),
    "augmented_images": BenchWorkload(
        name="augmented_images",
        file=REPO / "examples" / "augmented_images.py",
        grid={"loader_workers": (4, 8, 16), "pin_memory": (False, True), "precision": ("fp32", "bf16")},
        fixed={"batch_size": 256, "cudnn_benchmark": True, "memory_format": "channels_last",
               "matmul_precision": "high", "optimizer_impl": "fused", "persistent_workers": True},
        note="eager; 4 to 16 loader workers; micro-batch 256, cuDNN benchmark, channels_last, TF32, fused SGD and persistent workers fixed",
    ),
}


def bench_for(path_or_name: str, grid: dict[str, tuple[Any, ...]] | None = None) -> BenchWorkload:
    """The registered workload of that name or file, or a file of the user's; ``grid`` replaces the grid."""
    path = Path(path_or_name).resolve()
    found = WORKLOADS.get(path_or_name) or next((b for b in WORKLOADS.values() if b.file == path), None)
    if found is None:
        return BenchWorkload(name=path.stem, file=path, grid=dict(grid or {}))
    return dataclasses.replace(found, grid=dict(grid), fixed={}) if grid else found
