"""NVML readings taken around a trial's timed window.

Utilisation and memory are sampled in a background thread.  Energy comes from
the GPU's total-energy counter where it has one (Volta and newer) and it
advanced during the window, otherwise from sampled power integrated over
time: on an H100 the counter was seen not to move at all over a 56 ms window.  Without NVML (no NVIDIA driver, a
CPU run) the monitor reports nothing rather than failing the trial.
"""

from __future__ import annotations

import threading
import time
from typing import Any

try:
    import pynvml
except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
    pynvml = None  # type: ignore[assignment]


def nvml_handle_for_torch_device(index: int = 0) -> Any:
    """The NVML handle of torch's CUDA device ``index`` (matched by UUID, so CUDA_VISIBLE_DEVICES is honoured)."""
    import torch

    pynvml.nvmlInit()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        for candidate in (text, "GPU-" + text):
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(candidate)
            except pynvml.NVMLError:
                continue
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def driver_version() -> str | None:
    if pynvml is None:
        return None
    try:
        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - no driver: no version
        return None


class GpuMonitor:
    """Samples one GPU every ``interval_s`` between :meth:`start` and :meth:`stop`."""

    def __init__(self, device_index: int = 0, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.handle: Any = None
        self.error: str | None = None
        try:
            if pynvml is None:
                raise RuntimeError("nvidia-ml-py is not installed")
            self.handle = nvml_handle_for_torch_device(device_index)
        except Exception as exc:  # noqa: BLE001 - monitoring is best effort
            self.error = f"NVML unavailable: {exc}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._util: list[float] = []
        self._power_w: list[tuple[float, float]] = []
        self._mem_max = 0
        self._energy_start_mj: int | None = None
        self._t0 = 0.0

    def _read(self) -> bool:
        try:
            self._util.append(float(pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu))
            self._power_w.append((time.perf_counter(), pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0))
            self._mem_max = max(self._mem_max, int(pynvml.nvmlDeviceGetMemoryInfo(self.handle).used))
            return True
        except pynvml.NVMLError as exc:
            self.error = f"NVML sampling failed: {exc}"
            return False

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s) and self._read():
            pass

    def start(self) -> None:
        if self.handle is None:
            return
        try:
            self._energy_start_mj = int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except pynvml.NVMLError:
            self._energy_start_mj = None
        self._t0 = time.perf_counter()
        self._read()
        self._thread = threading.Thread(target=self._sample, name="dstune-nvml", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """Stop sampling; return the readings (empty when NVML is unavailable)."""
        if self.handle is None or self._thread is None:
            return {"nvml_error": self.error} if self.error else {}
        self._stop.set()
        self._thread.join()
        self._read()
        elapsed = time.perf_counter() - self._t0
        readings: dict[str, Any] = {
            "gpu_util_mean": sum(self._util) / len(self._util) if self._util else None,
            "nvml_memory_used_max": self._mem_max or None,
            "power_mean_w": (sum(p for _, p in self._power_w) / len(self._power_w)) if self._power_w else None,
        }
        energy_j = None
        if self._energy_start_mj is not None:
            try:
                delta_mj = int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)) - self._energy_start_mj
                if delta_mj > 0:
                    energy_j = delta_mj / 1000.0
                    readings["energy_source"] = "counter"
            except pynvml.NVMLError:
                energy_j = None
        if energy_j is None and readings["power_mean_w"] is not None:
            energy_j = readings["power_mean_w"] * elapsed
            readings["energy_source"] = "sampled-power"
        readings["energy_j"] = energy_j
        if self.error:
            readings["nvml_error"] = self.error
        return readings
