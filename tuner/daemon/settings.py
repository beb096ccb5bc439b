"""How a daemon runs: its store, GPU, polling, heartbeat and idle gate.

Apart from the daemon itself so that ``dstune status`` can tell a live
daemon from a dead one (by the heartbeat) without loading the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dstune.devices.idle_gate import GateSettings


@dataclass
class DaemonSettings:
    db: str | None = None
    gpu: str | None = None
    poll_s: float = 30.0
    heartbeat_s: float = 10.0
    gate: GateSettings = field(default_factory=GateSettings)
    retry_after_s: float = 3600.0
    stop_grace_s: float = 8.0
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    once: bool = False

    @property
    def stale_after_s(self) -> float:
        """A daemon whose heartbeat is older than this is dead."""
        return max(30.0, 6 * self.heartbeat_s)
