"""A workload written as a user would, not for dstune: a small Llama causal LM from its config (Hugging Face's
LlamaForCausalLM, rotary embeddings, grouped-query attention, SwiGLU), sequences of 256, a fixed global batch of
32 run as micro-batches of 4 (eight accumulated). Small enough that a micro-step takes tens of milliseconds on two
CPU cores, so a trial is timed by its parts with a chain of accumulating micro-steps in every window.

    dstune run benchmarks/unseen/tiny_llama.py --budget 3m
"""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import dstune

SEQ = 256


@dstune.workload(global_batch_size=32, batch_size=4)
def tiny_llama(ctx):
    config = LlamaConfig(vocab_size=2048, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ)
    model = LlamaForCausalLM(config)
    return dstune.Workload(
        model=model,
        optimizer=lambda params, **kw: torch.optim.AdamW(params, lr=3e-4, **kw),
        batch=lambda n, device: torch.randint(0, config.vocab_size, (n, SEQ), device=device),
        loss=lambda m, ids: m(input_ids=ids, labels=ids).loss,
    )
