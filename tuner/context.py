"""What a strategy plugin may know about the trial it takes part in.

A :class:`TuneContext` is built once per run by the probe process (which
imports the workload and looks at the device and the model), then shipped as
JSON to every trial process.  Plugins decide from it which knobs apply, and
the user's workload function receives it too.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TuneContext:
    """Facts about the device, the workload and the model of one run.

    ``facts`` holds what plugins reported about the model through the
    ``dstune_model_facts`` hook (for example how many repeated blocks could be
    checkpointed); the core reads none of it.
    """

    workload: str
    mode: str = "train"
    device: str = "cpu"
    device_name: str = "cpu"
    capability: tuple[int, int] | None = None
    bf16_supported: bool = False
    device_memory: int = 0
    cpu_count: int = 1
    global_batch_size: int | None = None
    default_batch_size: int = 32
    has_dataset: bool = False
    model_class: str = ""
    param_count: int = 0
    facts: dict[str, Any] = field(default_factory=dict)
    # Data-parallel training (@dstune.workload(data_parallel=True)): a trial is one job of world_size ranks.
    # rank and local_rank are this process's; the probe and the planning process see rank 0.
    data_parallel: bool = False
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def rank_batch_size(self) -> int | None:
        """Each rank's share of the global batch (the global batch itself when training on one process)."""
        return self.global_batch_size // self.world_size if self.global_batch_size else None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TuneContext":
        data = dict(data)
        if data.get("capability") is not None:
            data["capability"] = tuple(data["capability"])
        return cls(**data)

    def with_updates(self, **changes: Any) -> "TuneContext":
        return dataclasses.replace(self, **changes)
