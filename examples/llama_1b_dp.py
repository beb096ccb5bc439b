"""The 1.3-billion-parameter decoder of ``llama_1b.py``, trained data-parallel: each trial one job of N GPUs.

The same model, sequences and global batch of 32 sequences, written as a cautious team would for DDP: fp32,
a micro-batch of 4 per rank.  The global batch is shared among the ranks, so on two GPUs each rank
accumulates four micro-batches of 4.  dstune chooses the wrapper (DDP or FSDP2 with its settings) with every
other knob, on every rank.  Needs ``transformers`` and as many GPUs as ranks; no weights are downloaded.

    dstune run examples/llama_1b_dp.py --world-size 2 --budget 15m
"""

import importlib.util
from pathlib import Path

import dstune

# The model and batches are llama_1b.py's, loaded from beside this file (examples are files, not a package).
_spec = importlib.util.spec_from_file_location("dstune_example_llama_1b", Path(__file__).with_name("llama_1b.py"))
_single = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_single)


@dstune.workload(global_batch_size=32, batch_size=4, data_parallel=True)
def llama_1b_dp(ctx):
    return _single.llama_1b(ctx)  # built on this rank's GPU: the rank's process has made it the current device
