"""A workload written as a user would, not for dstune: a Qwen2-style causal LM of 336M parameters from its
config (grouped-query attention, 4 key-value heads for 16 query heads, biases on q/k/v), on right-padded
sequences of up to 1024 tokens with an attention mask, and the padding left out of the loss. A fixed global batch
of 64 runs as micro-batches of 8 in fp32. The mask is what SDPA's flash kernel refuses; the model is built on the
CPU and moved, as most scripts do. Needs transformers; nothing is downloaded.

    dstune run benchmarks/unseen/qwen2_padded.py --budget 4m
"""
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import dstune

SEQ = 1024
SHAPE = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
             num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=SEQ)


@dstune.workload(global_batch_size=64, batch_size=8)
def qwen2_padded(ctx):
    config = Qwen2Config(**SHAPE, use_cache=False)
    model = Qwen2ForCausalLM(config)

    def batch(n, device):
        ids = torch.randint(0, config.vocab_size, (n, SEQ), device=device)
        lengths = torch.randint(SEQ // 2, SEQ + 1, (n,), device=device)
        mask = (torch.arange(SEQ, device=device)[None, :] < lengths[:, None]).long()
        return ids, mask, ids.masked_fill(mask == 0, -100)

    return dstune.Workload(model=model, optimizer=lambda params, **kw: torch.optim.AdamW(params, lr=3e-4, **kw),
                           batch=batch, loss=lambda m, b: m(input_ids=b[0], attention_mask=b[1], labels=b[2]).loss)
