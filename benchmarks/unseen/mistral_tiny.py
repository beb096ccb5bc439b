"""A workload written as a user would, not for dstune: a small Mistral causal LM from its config (Hugging Face's
MistralForCausalLM, sliding-window attention of 64, grouped-query attention 8/2), sequences of 128, a fixed global
batch of 16 run as micro-batches of 4.  On a 2-core CPU a trial takes seconds.

    dstune run benchmarks/unseen/mistral_tiny.py --budget 3m
"""
import torch
from transformers import MistralConfig, MistralForCausalLM

import dstune

SEQ = 128


@dstune.workload(global_batch_size=16, batch_size=4)
def mistral_tiny(ctx):
    config = MistralConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                           num_attention_heads=8, num_key_value_heads=2, sliding_window=64,
                           max_position_embeddings=SEQ)
    model = MistralForCausalLM(config)
    return dstune.Workload(
        model=model,
        optimizer=lambda params, **kw: torch.optim.AdamW(params, lr=3e-4, **kw),
        batch=lambda n, device: torch.randint(0, config.vocab_size, (n, SEQ), device=device),
        loss=lambda model, ids: model(input_ids=ids, labels=ids).loss,
    )
