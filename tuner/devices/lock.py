"""One iteration per device at a time, across processes: a lock file per GPU (or per CPU host).

Trials measure speed, so two tuning runs on one GPU would spoil each other's
numbers.  Every ``dstune run`` (manual or started by a daemon) holds the
lock of its device for the whole iteration.  The lock is a ``filelock``
lock file (released by the kernel when its holder dies, so a killed run
never leaves it stuck); a JSON file beside it says who holds it, so a
waiting run can tell the user.

A GPU is named by its NVML UUID, so ``CUDA_VISIBLE_DEVICES=1`` in one shell
and ``=GPU-…`` in another lock the same device.  A host without NVIDIA GPUs
has one lock for its CPUs.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from dstune.errors import UsageError

DEFAULT_LOCK_DIR = "/tmp/dstune-locks"


class DeviceBusy(Exception):
    """The device stayed taken (locked, or busy with foreign work) for longer than allowed."""


@dataclass(frozen=True)
class Device:
    """The device a run tunes on: ``key`` names its lock, ``label`` is for people, ``nvml_index`` for the gate.

    ``model`` is NVML's name of the GPU ("cpu" on a host without one):
    trials are compared, and incumbents kept, per model.
    """

    key: str
    label: str
    nvml_index: int | None = None
    model: str = "cpu"


def visible_gpu(gpu: str | None = None) -> str | None:
    """The GPU a run uses: ``gpu`` if given, else the first of CUDA_VISIBLE_DEVICES, else None (device 0)."""
    if gpu:
        return gpu.strip()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return None
    return visible.split(",")[0].strip()


def resolve_device(gpu: str | None = None) -> Device:
    """The run's device, asking NVML which GPU ``gpu`` (an index or a UUID) is; the CPU without NVML."""
    wanted = visible_gpu(gpu)
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception:  # noqa: BLE001 - no NVIDIA driver: a CPU host
        count = 0
    if count == 0:
        return Device("cpu-" + socket.gethostname(), f"the CPUs of {socket.gethostname()}")
    if wanted is None:
        wanted = "0"
    try:
        handle = (pynvml.nvmlDeviceGetHandleByUUID(wanted) if not wanted.isdigit()
                  else pynvml.nvmlDeviceGetHandleByIndex(int(wanted)))
    except pynvml.NVMLError as exc:
        raise UsageError(f"GPU {wanted!r} is not a GPU of this host ({exc}); it has {count} GPU(s), "
                         f"indices 0-{count - 1}. Give an index or a UUID from nvidia-smi -L.") from None
    uuid = pynvml.nvmlDeviceGetUUID(handle)
    uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    index = int(pynvml.nvmlDeviceGetIndex(handle))
    name = pynvml.nvmlDeviceGetName(handle)
    return Device(uuid, f"GPU {index} ({uuid})", index, name.decode() if isinstance(name, bytes) else str(name))


def lock_dir() -> Path:
    path = Path(os.environ.get("DSTUNE_LOCK_DIR", DEFAULT_LOCK_DIR))
    try:
        path.mkdir(parents=True, exist_ok=True)
        if str(path) == DEFAULT_LOCK_DIR:
            os.chmod(path, 0o1777)  # shared by every user of the host, like /tmp
    except PermissionError:
        pass
    except OSError as exc:
        raise UsageError(f"lock folder {path} cannot be created ({exc.strerror}). Set DSTUNE_LOCK_DIR "
                         "to a writable folder shared by every dstune on this host.") from None
    return path


def holder(device: Device) -> dict[str, object] | None:
    """Who holds ``device``'s lock, as that process wrote it (None if nobody said)."""
    try:
        return json.loads((lock_dir() / f"{device.key}.holder.json").read_text())
    except (OSError, ValueError):
        return None


def describe_holder(info: dict[str, object] | None) -> str:
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('what')}, since {info.get('since')})"


@contextmanager
def hold_device(device: Device, what: str, timeout_s: float | None,
                on_wait: Callable[[str], None] = lambda text: None) -> Iterator[None]:
    """Hold ``device``'s lock inside the block; wait for it at most ``timeout_s`` (None: forever).

    Raises :class:`DeviceBusy` when the wait runs out, naming the holder.
    """
    directory = lock_dir()
    lock = FileLock(str(directory / f"{device.key}.lock"), mode=0o666)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        on_wait(f"{device.label} is held by {describe_holder(holder(device))}; waiting for it"
                + (f" (at most {timeout_s:.0f} s)" if timeout_s is not None else ""))
        started = time.monotonic()
        try:
            lock.acquire(timeout=-1 if timeout_s is None else timeout_s, poll_interval=0.2)
        except Timeout:
            raise DeviceBusy(f"{device.label} was still held by {describe_holder(holder(device))} after "
                             f"{time.monotonic() - started:.0f} s") from None
    info_path = directory / f"{device.key}.holder.json"
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), "argv": sys.argv}
        tmp = info_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, info_path)
        yield
    finally:
        try:
            info_path.unlink()
        except OSError:
            pass
        lock.release()
