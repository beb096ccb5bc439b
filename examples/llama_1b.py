"""A 1.3-billion-parameter Llama-style decoder trained from its config (random init), on sequences of 2048 tokens.

Written as a cautious team would write it: fp32 weights and maths, a
micro-batch of 4 sequences, and a fixed global batch of 32 sequences (eight
accumulation steps, 65,536 tokens a step), with AdamW.  On an 80 GB or
141 GB GPU the tuning guide's first answer (bf16 and the whole global batch
at once) runs out of memory: this is the workload where the memory boundary
decides.  The model is built on the GPU directly, so no process spends half
a minute initialising 1.3 billion parameters on the CPU.  Needs
``transformers``; no weights are downloaded.

    dstune run examples/llama_1b.py --budget 10m
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import dstune

SEQ = 2048
SHAPE = dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
             num_key_value_heads=16, vocab_size=32000, max_position_embeddings=SEQ)


@dstune.workload(global_batch_size=32, batch_size=4)
def llama_1b(ctx):
    config = LlamaConfig(**SHAPE, attn_implementation="sdpa", use_cache=False)
    with torch.device("cuda" if ctx.is_cuda else "cpu"):
        model = LlamaForCausalLM(config)
    return dstune.Workload(
        model=model,
        optimizer=lambda params, **kw: torch.optim.AdamW(params, lr=3e-4, weight_decay=0.1, **kw),
        batch=lambda n, device: torch.randint(0, config.vocab_size, (n, SEQ), device=device),
        loss=lambda model, ids: model(input_ids=ids, labels=ids).loss,
    )
