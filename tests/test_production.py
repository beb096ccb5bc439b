"""Production use: ``dstune.apply`` driven by the user's own loop and data, as a trial ran it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from .conftest import EXAMPLES, OTHER_THREADS, WORKLOADS

OBSERVE = WORKLOADS / "observe.py"
# Every knob that changes how a step runs: bf16 autocast, 4 micro-batches of 4 for the global 16, NHWC
# convolutions, a compiled model, a thread count trials do not get by default (conftest.OTHER_THREADS).
CONFIG = {"precision": "bf16", "batch_size": 4, "memory_format": "channels_last", "compile": "default",
          "intra_op_threads": OTHER_THREADS}

# Run in a process of its own: apply sets process-wide state (threads). It trains three steps on batches the
# "user" made, then the same weights and batches in a plain PyTorch loop written from the docs.
OWN_LOOP = """
import json, os, sys, torch
import torch.nn.functional as F
sys.path.insert(0, {workloads!r})
import dstune, observe

composed = dstune.apply(observe.observe_conv_accum, {config!r})
plain = observe.Net(conv=True)
target = getattr(composed.model, "_orig_mod", composed.model)
target.load_state_dict(plain.state_dict())  # the same weights on both sides (copied into the NHWC layout)
generator = torch.Generator().manual_seed(0)
batches = [(torch.randn(16, 3, 8, 8, generator=generator), torch.randint(0, 4, (16,), generator=generator))
           for _ in range(3)]
tuned = [composed.step(batch).item() for batch in batches]
facts = json.load(open(os.environ["DSTUNE_OBSERVE"]))

device = composed.device  # the GPU on a CUDA machine, as the trial ran
plain = plain.to(device)
optimizer = torch.optim.SGD(plain.parameters(), lr=0.01)
reference = []
for x, y in batches:
    total = 0.0
    for xs, ys in zip(x.to(device).split(4), y.to(device).split(4)):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(plain(xs).float(), ys)
        (loss / 4).backward()
        total += loss.item() / 4
    optimizer.step()
    optimizer.zero_grad()
    reference.append(total)
with torch.no_grad(), composed.autocast():
    evaluated = composed.model(batches[0][0].to(device, memory_format=torch.channels_last)).dtype
loader = composed.loader(torch.utils.data.TensorDataset(*batches[0]))
print(json.dumps({{"tuned": tuned, "reference": reference, "facts": facts, "plan": [composed.plan.micro_batch,
    composed.plan.accumulation], "eval_dtype": str(evaluated), "loader_batch": loader.batch_size,
    "loader_workers": loader.num_workers, "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}}))
"""


@pytest.mark.slow
def test_a_users_own_batches_train_as_the_trial_did_and_match_a_plain_loop(tmp_path, trials, monkeypatch):
    # The trial's compile cache is dstune's own for the workload, in a folder of this test's: no cache variable
    # inherited from this process, so only dstune.apply can point the user's loop at it.
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DSTUNE_CACHE_DIR", str(tmp_path / "cache"))
    outcome, in_trial = trials.run(OBSERVE, "observe_conv_accum", timeout_s=400, **CONFIG)
    assert outcome.status == "ok", outcome.error
    facts_file = tmp_path / "production.json"
    done = subprocess.run([sys.executable, "-c", OWN_LOOP.format(workloads=str(WORKLOADS), config=CONFIG)],
                          capture_output=True, text=True, timeout=400,
                          env={**os.environ, "DSTUNE_OBSERVE": str(facts_file)})
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    # The settings the trial had: autocast's dtype, the micro-batch the loss saw, NHWC, compile, threads.
    autocast = "autocast_cuda" if in_trial["device"].startswith("cuda") else "autocast_cpu"
    for fact in (autocast, "output_dtype", "batch_rows", "conv_channels_last", "model_type", "num_threads",
                 "device"):
        assert found["facts"][fact] == in_trial[fact], fact
    assert found["facts"][autocast] is True and found["facts"]["output_dtype"] == "torch.bfloat16"
    assert found["facts"]["batch_rows"] == 4 and found["plan"] == [4, 4]  # 16 = 4 micro-batches of 4
    assert found["facts"]["conv_channels_last"] is True and found["facts"]["num_threads"] == OTHER_THREADS
    assert found["facts"]["model_type"] == "OptimizedModule"
    # The same weights and data give a plain loop's losses, within bf16's tolerance, step after step.
    for tuned, reference in zip(found["tuned"], found["reference"]):
        assert abs(tuned - reference) <= 0.02 * abs(reference), (found["tuned"], found["reference"])
    assert found["tuned"][-1] != found["tuned"][0]  # the weights moved
    assert found["eval_dtype"] == "torch.bfloat16"  # autocast() for evaluation code
    assert found["loader_batch"] == 16  # a DataLoader of global batches, for step(batch)
    # It compiled from the kernels the trial built (on two CPU cores a cold compile of this model takes ~45 s).
    trials_cache = tmp_path / "cache" / "observe_conv_accum" / "inductor"
    assert found["inductor_cache"] == str(trials_cache) and any(trials_cache.iterdir())


def test_the_files_on_disk_example_trains_on_its_files_with_a_tuned_configuration(tmp_path):
    """examples/files_on_disk.py as a user runs it: samples written to disk, then read file by file in loader
    workers, in micro-batches of 16 accumulated to its global 64, with the configuration exported to a file."""
    exported = tmp_path / "best.json"
    exported.write_text(json.dumps({"workload": "files_on_disk", "config": {
        "batch_size": 16, "loader_workers": 2, "persistent_workers": True, "precision": "bf16"}}))
    done = subprocess.run([sys.executable, str(EXAMPLES / "files_on_disk.py"), "--epochs", "2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DSTUNE_CONFIG": str(exported)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "files-on-disk-data").glob("sample-*.pt"))) == 1024
    # On whichever device the machine has: the example trains on CUDA where there is one.
    assert re.search(r"^micro-batch 16 x 4 accumulated, 2 loader workers, on (cpu|cuda:\d+)$", done.stdout, re.M), \
        done.stdout
    losses = [float(line.split("mean loss ")[1].split(",")[0]) for line in done.stdout.splitlines()
              if line.startswith("epoch")]
    assert len(losses) == 2 and losses[1] < losses[0], done.stdout  # it learns from what it read
