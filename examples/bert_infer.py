"""BERT-base inference (random init), sequences of 128 tokens: throughput and latency percentiles.

Needs ``transformers``.

    dstune run examples/bert_infer.py --budget 5m
"""

import torch
from transformers import BertConfig, BertModel

import dstune

SEQ = 128


@dstune.workload(mode="inference", batch_size=32)
def bert_infer(ctx):
    config = BertConfig()
    return dstune.Workload(
        model=BertModel(config),
        batch=lambda n, device: {
            "input_ids": torch.randint(0, config.vocab_size, (n, SEQ), device=device),
            "attention_mask": torch.ones(n, SEQ, dtype=torch.long, device=device),
        },
        forward=lambda model, batch: model(**batch).last_hidden_state,
    )
