"""A workload written as a user would, not for dstune: DistilBERT sequence classification from its config, with
padded, masked batches (so SDPA's flash kernel refuses it). Used to try dstune on a model nobody tuned it for.

    dstune run benchmarks/unseen/distilbert_cls.py --budget 3m
"""
import torch
from transformers import DistilBertConfig, DistilBertForSequenceClassification

import dstune

SEQ = 256


@dstune.workload(global_batch_size=64, batch_size=16)
def distilbert_cls(ctx):
    config = DistilBertConfig(num_labels=3)
    model = DistilBertForSequenceClassification(config)

    def batch(n, device):
        ids = torch.randint(0, config.vocab_size, (n, SEQ), device=device)
        lengths = torch.randint(SEQ // 4, SEQ + 1, (n,), device=device)
        mask = (torch.arange(SEQ, device=device)[None, :] < lengths[:, None]).long()
        return ids, mask, torch.randint(0, 3, (n,), device=device)

    return dstune.Workload(model=model, optimizer=lambda params, **kw: torch.optim.AdamW(params, lr=3e-5, **kw),
                           batch=batch, loss=lambda m, b: m(input_ids=b[0], attention_mask=b[1], labels=b[2]).loss)
