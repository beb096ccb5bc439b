"""GPT-2 small (124M) language-model training from its config (random init), sequences of 1024 tokens.

Global batch fixed at 32 sequences (32k tokens a step); the example runs
micro-batches of 8.  Needs ``transformers``.

    dstune run examples/gpt2.py --budget 10m
"""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import dstune

SEQ = 1024


@dstune.workload(global_batch_size=32, batch_size=8)
def gpt2(ctx):
    config = GPT2Config(n_positions=SEQ)
    model = GPT2LMHeadModel(config)
    return dstune.Workload(
        model=model,
        optimizer=lambda params, **kw: torch.optim.AdamW(params, lr=6e-4, weight_decay=0.1, **kw),
        batch=lambda n, device: torch.randint(0, config.vocab_size, (n, SEQ), device=device),
        loss=lambda model, ids: model(input_ids=ids, labels=ids).loss,
    )
