"""A :class:`dstune.Workload` from a Hugging Face model, a dataset and a collator, as a ``Trainer`` takes them.

``workload_from(model, dataset, collator)`` gives ``dstune run`` what
``Trainer(model=..., train_dataset=..., data_collator=...)`` would train:
the loss is the model's own (``model(**batch).loss``, so batches carry
``labels``), the optimizer AdamW as ``Trainer`` builds it by default (learning
rate 5e-5, weight decay 0) unless ``optimizer`` is given, and dstune sets the
batch size, the loader settings and everything else it tunes.  The export
(``dstune export --format transformers``) takes the result back to
``TrainingArguments``.
"""

from __future__ import annotations

from typing import Any, Callable


def workload_from(model: Any, dataset: Any, collator: Callable[[list[Any]], Any] | None = None,
                  optimizer: Callable[..., Any] | None = None) -> Any:
    """The workload ``dstune run`` tunes; ``optimizer`` is a factory ``(params, **kw)`` (default: AdamW)."""
    import torch

    import dstune

    def loss(model: Any, batch: Any) -> Any:
        out = model(**batch)
        if getattr(out, "loss", None) is None:
            raise ValueError(f"{type(model).__name__} returned no loss: give the batches 'labels' (the collator "
                             "or the dataset makes them)")
        return out.loss

    return dstune.Workload(
        model=model,
        optimizer=optimizer or (lambda params, **kw: torch.optim.AdamW(params, lr=5e-5, weight_decay=0.0, **kw)),
        dataset=dataset, collate_fn=collator, loss=loss)
