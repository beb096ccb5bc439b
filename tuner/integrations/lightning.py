"""Lightning and dstune: ``workload_from`` tunes a LightningModule, ``DstuneCallback`` trains with the result.

``workload_from(module, datamodule=...)`` (at the end) turns a LightningModule
and its data into the workload ``dstune run`` tunes, with no rewriting.  The
callback applies what Lightning's ``Trainer`` has no flag for.

``dstune export WORKLOAD --format lightning`` (or ``dstune.export.lightning``)
splits a configuration in two: ``Trainer`` keyword arguments (precision,
accumulation, cuDNN benchmark) and the callback's settings: compile,
channels_last, activation checkpointing, matmul precision, threads, the
allocator and the SDPA backend.  The callback applies them with dstune's own
plugins, the very hooks a trial ran:

- process-wide settings (``dstune_configure_process``) when it is created,
  so create it before anything touches CUDA (the allocator reads its
  settings when CUDA starts);
- model settings (``dstune_prepare_model``) in ``setup``, on each child
  module of the LightningModule, in place (the context carries
  :data:`dstune.export.PREPARE_IN_PLACE`, so compile uses ``Module.compile``):
  ``training_step`` calling ``self.model(x)`` runs the compiled model, and
  checkpoints keep their parameter names.

Lightning trains on the DataLoader you build, so the callback holds what
it needs: ``callback.batch_size`` (the tuned micro-batch) and
``callback.loader_kwargs`` (workers, pinning, prefetching, from the plugins'
``dstune_loader_kwargs``): ``DataLoader(dataset, batch_size=cb.batch_size,
**cb.loader_kwargs)``.  When training starts it checks the DataLoader against
them and warns about each difference.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning

from dstune.context import TuneContext
from dstune.export import PREPARE_IN_PLACE, DstuneExportWarning
from dstune.plugin_calls import chain_hook
from dstune.plugin_manager import plugin_manager


class DstuneCallback(lightning.Callback):
    """Apply the tuned settings Lightning has no flag for; ``settings`` is an export's ``.callback``."""

    def __init__(self, settings: dict[str, Any] | None = None, disabled_plugins: tuple[str, ...] = (),
                 **more: Any) -> None:
        import torch

        self.settings = {**(settings or {}), **more}
        self._pm = plugin_manager(disabled_plugins).pm
        self._ctx = TuneContext(workload="lightning", device="cuda" if torch.cuda.is_available() else "cpu",
                                facts={PREPARE_IN_PLACE: True})
        plan = self._pm.hook.dstune_batch_plan(config=dict(self.settings), ctx=self._ctx)  # the plugin's word
        self.batch_size: int | None = plan.micro_batch if plan is not None else None
        self._pm.hook.dstune_configure_process(config=dict(self.settings), ctx=self._ctx)
        self.loader_kwargs: dict[str, Any] = {}
        for part in self._pm.hook.dstune_loader_kwargs(config=dict(self.settings), ctx=self._ctx):
            self.loader_kwargs.update(part or {})
        self.applied: list[str] = []  # which children were prepared, for the curious and for tests

    def setup(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, stage: str) -> None:
        import torch

        if self.applied:  # setup runs once per stage (fit, validate, ...): prepare the model once
            return

        ctx = self._ctx.with_updates(device="cuda" if torch.cuda.is_available() and
                                     pl_module.device.type == "cuda" else self._ctx.device)
        for name, child in list(pl_module.named_children()):
            if name.startswith("_") or not any(True for _ in child.parameters()):
                continue
            prepared = chain_hook(self._pm, "dstune_prepare_model", child, config=dict(self.settings), ctx=ctx)
            if prepared is not child:  # a plugin that cannot work in place: its result takes the child's place
                setattr(pl_module, name, prepared)
            self.applied.append(name)

    def on_train_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        loader = getattr(trainer, "train_dataloader", None)
        wanted = {**({"batch_size": self.batch_size} if self.batch_size is not None else {}), **self.loader_kwargs}
        for name, value in wanted.items():
            found = getattr(loader, name, value)
            if found != value:
                warnings.warn(f"the training DataLoader's {name} is {found!r}, but the tuned setting is {value!r}: "
                              f"build it as DataLoader(dataset, batch_size=callback.batch_size, "
                              "**callback.loader_kwargs)", DstuneExportWarning, stacklevel=2)


def _first_optimizer(configured: Any) -> Any:
    """The optimizer out of whatever ``configure_optimizers`` returned (one, a list, a tuple with schedulers, a
    dict with ``optimizer``)."""
    import torch

    if isinstance(configured, torch.optim.Optimizer):
        return configured
    if isinstance(configured, dict) and "optimizer" in configured:
        return configured["optimizer"]
    if isinstance(configured, (list, tuple)) and configured:
        return _first_optimizer(configured[0])
    raise TypeError(f"configure_optimizers returned {type(configured).__name__}; dstune needs an optimizer, a list "
                    "or tuple starting with one, or a dict with 'optimizer'")


def workload_from(module: lightning.LightningModule, datamodule: lightning.LightningDataModule | None = None,
                  train_dataloader: Any = None) -> Any:
    """A :class:`dstune.Workload` from a LightningModule and its data, for ``dstune run``.

    The loss is what ``training_step`` returns (a tensor, or a dict's
    ``loss``); the optimizer is ``configure_optimizers``' (rebuilt with
    dstune's kernel choice); the data is the training DataLoader's dataset
    and collate function, from ``datamodule`` (``prepare_data``, then
    ``setup("fit")``), ``train_dataloader``, or the module's own
    ``train_dataloader()``.  dstune sets the batch size and the loader
    settings; the global batch is the one ``@dstune.workload`` declares.
    Schedulers and Lightning's hooks around the step do not run in a trial.
    """
    import dstune

    from .optimizers import rebuilt

    if datamodule is not None:
        datamodule.prepare_data()
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
    else:
        loader = train_dataloader if train_dataloader is not None else module.train_dataloader()
    if not hasattr(loader, "dataset"):
        raise TypeError(f"the training data is a {type(loader).__name__}; dstune needs a torch DataLoader")

    def loss(model: Any, batch: Any) -> Any:
        out = module.training_step(batch, 0)
        found = out.get("loss") if isinstance(out, dict) else out
        if found is None:
            raise ValueError(f"{type(module).__name__}.training_step returned {out!r}: return the loss, or a dict "
                             "with 'loss'")
        return found

    return dstune.Workload(model=module, optimizer=rebuilt(lambda: _first_optimizer(module.configure_optimizers())),
                           dataset=loader.dataset, collate_fn=loader.collate_fn, loss=loss)
