"""Batch-size finders, run in a process of their own: ``python -m benchmarks.harness.finders KIND SPEC OUT``.

``lightning``: PyTorch Lightning's ``Tuner.scale_batch_size`` (mode
``binsearch``) on a LightningModule wrapping the workload's own model,
optimizer, loss and data, everything else at Lightning's defaults.
``accelerate``: ``accelerate.utils.find_executable_batch_size`` around a
plain loop of three steps, halving from a starting batch after each
out-of-memory error.  ``pow2``: the largest power-of-two micro-batch that
fits with a given configuration (the checklist's rule), by doubling (or, with
a global batch, from the global batch down) in one process.  ``peak``: the
bf16 matrix-product rate of this GPU, the denominator of MFU.

Each finder works on the real libraries and a real device: an out-of-memory
error is the signal they search on, so a CPU host cannot run them.  The
result is JSON: the batch found, how long the search took, and what it tried.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from dstune.context import TuneContext
from dstune.plugin_manager import plugin_manager
from dstune.trial.composition import compose, configure_process, default_forward
from dstune.trial.out_of_memory import is_oom
from dstune.trial.workload_file import select_workload

STEPS = 3
POOL = 64  # distinct synthetic samples behind Lightning's dataset
VIRTUAL_SAMPLES = 1 << 24
POW2_CAP = 1 << 16  # a doubling search stops here even if memory is left: batches beyond add no throughput


def _built(spec: dict[str, Any]) -> tuple[Any, Any, TuneContext]:
    ctx = TuneContext.from_dict(spec["ctx"])
    definition = select_workload(spec["workload_file"], spec.get("workload_name"))
    torch.manual_seed(0)
    return definition, definition.build(ctx), ctx


def _batch_maker(built: Any) -> Callable[[int, Any], Any]:
    """``(n, device) -> batch``: the workload's synthetic batch, or ``n`` samples of its dataset collated."""
    if built.batch is not None:
        return built.batch

    def from_dataset(n: int, device: Any) -> Any:
        loader = torch.utils.data.DataLoader(built.dataset, batch_size=n, shuffle=True, collate_fn=built.collate_fn)
        from dstune.trial.composition import to_device

        return to_device(next(iter(loader)), torch.device(device))

    return from_dataset


def _nth(batch: Any, i: int) -> Any:
    """Sample ``i`` of a batch (a tensor, or a tuple, list or dict of them)."""
    if isinstance(batch, torch.Tensor):
        return batch[i]
    if isinstance(batch, dict):
        return {k: _nth(v, i) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_nth(v, i) for v in batch)
    return batch


def lightning_finder(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        import lightning.pytorch as pl
        from lightning.pytorch.tuner import Tuner
    except ImportError:  # the standalone distribution
        import pytorch_lightning as pl  # type: ignore[no-redef]
        from pytorch_lightning.tuner import Tuner  # type: ignore[no-redef]

    _, built, ctx = _built(spec)
    train = ctx.mode == "train"
    forward = built.forward or default_forward

    class Samples(torch.utils.data.Dataset):
        """Samples cut from a pool of synthetic ones made on the host; Lightning collates and moves them.

        Its length is far beyond any batch, so Lightning's rule of stopping at
        the dataset's size never decides the answer.
        """

        pool = built.batch(POOL, "cpu") if built.batch is not None else None

        def __len__(self) -> int:
            return VIRTUAL_SAMPLES

        def __getitem__(self, index: int) -> Any:
            return _nth(self.pool, index % POOL)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = built.model
            self.batch_size = int(spec.get("init_val", 2))

        def _loader(self) -> Any:
            if built.batch is not None:
                return torch.utils.data.DataLoader(Samples(), batch_size=self.batch_size)
            return torch.utils.data.DataLoader(built.dataset, batch_size=self.batch_size, shuffle=True,
                                               collate_fn=built.collate_fn)

        def train_dataloader(self) -> Any:
            return self._loader()

        def predict_dataloader(self) -> Any:
            return self._loader()

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return built.loss(self.model, batch)

        def predict_step(self, batch: Any, batch_idx: int) -> None:
            forward(self.model, batch)  # outputs are dropped: kept, they would fill the GPU and end the search early
            return None

        def configure_optimizers(self) -> Any:
            return built.optimizer(self.model.parameters())

    root = tempfile.mkdtemp(prefix="dstune-lightning-")  # its batch finder saves and restores a checkpoint here
    trainer = pl.Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, max_epochs=1, default_root_dir=root,
                         limit_predict_batches=STEPS)  # the finder limits fit to its steps, not predict
    started = time.perf_counter()
    found = Tuner(trainer).scale_batch_size(Module(), method="fit" if train else "predict", mode="binsearch",
                                            max_trials=int(spec.get("max_trials", 25)))
    return {"batch_size": found, "seconds": time.perf_counter() - started, "library": "lightning",
            "version": pl.__version__, "settings": {"mode": "binsearch", "init_val": spec.get("init_val", 2)}}


def accelerate_finder(spec: dict[str, Any]) -> dict[str, Any]:
    import accelerate
    from accelerate.utils import find_executable_batch_size

    _, built, ctx = _built(spec)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = built.model.to(device)
    model.train(ctx.mode == "train")
    make = _batch_maker(built)
    forward = built.forward or default_forward
    tried: list[int] = []

    def attempt(batch_size: int) -> int:
        tried.append(batch_size)
        model.zero_grad(set_to_none=True)
        if ctx.mode == "train":
            optimizer = built.optimizer(model.parameters())
            for _ in range(STEPS):
                built.loss(model, make(batch_size, device)).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                for _ in range(STEPS):
                    forward(model, make(batch_size, device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return batch_size

    start = int(spec["starting_batch_size"])
    started = time.perf_counter()
    found = find_executable_batch_size(attempt, starting_batch_size=start)()
    return {"batch_size": found, "seconds": time.perf_counter() - started, "library": "accelerate",
            "version": accelerate.__version__, "tried": tried, "settings": {"starting_batch_size": start}}


def _fits(definition: Any, ctx: TuneContext, pm: Any, config: dict[str, Any], n: int) -> bool:
    composed = None
    try:
        composed = compose(pm, definition, {**config, "batch_size": n}, ctx)
        for _ in range(2):
            composed.step()
        if ctx.is_cuda:
            torch.cuda.synchronize()
        return True
    except Exception as exc:  # noqa: BLE001 - only an OOM is an answer; anything else is re-raised
        if not is_oom(exc):
            raise
        return False
    finally:
        del composed
        gc.collect()
        if ctx.is_cuda:
            torch.cuda.empty_cache()


def pow2_finder(spec: dict[str, Any]) -> dict[str, Any]:
    """The largest power-of-two micro-batch that runs two steps of ``spec['config']`` (compile off)."""
    ctx = TuneContext.from_dict(spec["ctx"])
    definition = select_workload(spec["workload_file"], spec.get("workload_name"))
    pm = plugin_manager().pm
    config = {**spec["config"], **({"compile": "off"} if "compile" in spec["config"] else {})}
    configure_process(pm, config, ctx)
    tried: list[tuple[int, bool]] = []
    started = time.perf_counter()
    found = None
    if ctx.global_batch_size:
        n = ctx.global_batch_size
        while n >= 1 and found is None:
            ok = _fits(definition, ctx, pm, config, n)
            tried.append((n, ok))
            found = n if ok else None
            if n % 2:
                break
            n //= 2
    else:
        n = 1 << max(0, (ctx.default_batch_size - 1).bit_length())
        while n <= int(spec.get("cap", POW2_CAP)):
            ok = _fits(definition, ctx, pm, config, n)
            tried.append((n, ok))
            if not ok:
                break
            found = n
            n *= 2
    return {"batch_size": found, "seconds": time.perf_counter() - started, "tried": tried}


def bf16_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """Median rate of 8192³ bf16 matrix products over five runs of ten (after three warm-ups)."""
    n = int(spec.get("n", 8192))
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        torch.mm(a, b, out=out)
    rates = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            torch.mm(a, b, out=out)
        end.record()
        torch.cuda.synchronize()
        rates.append(2 * n**3 * 10 / (start.elapsed_time(end) / 1000))
    rates.sort()
    return {"bf16_matmul_flops": rates[len(rates) // 2], "runs": rates, "n": n}


FINDERS = {"lightning": lightning_finder, "accelerate": accelerate_finder, "pow2": pow2_finder, "peak": bf16_peak}


def main(argv: list[str] | None = None) -> int:
    kind, spec_path, out_path = (sys.argv[1:] if argv is None else argv)
    spec = json.loads(Path(spec_path).read_text())
    result = FINDERS[kind](spec)
    Path(out_path).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
