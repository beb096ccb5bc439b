"""An optimizer the user already built, as the factory a :class:`dstune.Workload` takes.

dstune's optimizer plugin passes keyword arguments (``fused=True``,
``foreach=True``) to the workload's optimizer factory.  A LightningModule's
``configure_optimizers`` or a Trainer's default builds the optimizer itself,
so the adapters rebuild it: same class, same parameter groups and
hyperparameters, with dstune's keywords taking the place of the groups' own.
"""

from __future__ import annotations

from typing import Any, Callable


def rebuilt(make: Callable[[], Any]) -> Callable[..., Any]:
    """A factory ``(params, **kw) -> optimizer`` from ``make()``, which builds the user's optimizer."""

    def factory(params: Any, **kwargs: Any) -> Any:
        original = make()
        groups = [{k: v for k, v in group.items() if k not in kwargs} for group in original.param_groups]
        return type(original)(groups, **kwargs)

    return factory
