"""A small transformer encoder whose attention calls ``scaled_dot_product_attention`` (for the SDPA knob)."""

import torch
import torch.nn.functional as F
from torch import nn

import dstune


class SelfAttention(nn.Module):
    def __init__(self, width=256, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x, mask=None):
        """Causal attention; with ``mask``, padding-masked attention as BERT passes it: an additive float mask,
        which FlashAttention does not take."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return x + self.out(y.transpose(1, 2).reshape(b, t, c))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(SelfAttention(), SelfAttention())  # repeated blocks: checkpointing applies
        self.head = nn.Linear(256, 16)

    def forward(self, x):
        return self.head(self.blocks(x))


@dstune.workload(batch_size=8)
def attention(ctx):
    model = Encoder()
    return dstune.Workload(
        model=model,
        optimizer=lambda params, **kw: torch.optim.AdamW(params, lr=1e-3, **kw),
        batch=lambda n, device: (torch.randn(n, 128, 256, device=device), torch.randint(0, 16, (n, 128), device=device)),
        loss=lambda model, batch: F.cross_entropy(model(batch[0]).flatten(0, 1).float(), batch[1].flatten()),
    )


class MaskedEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([SelfAttention(), SelfAttention()])
        self.head = nn.Linear(256, 16)

    def forward(self, x, lengths):
        keep = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, float("-inf"))
        mask = mask[:, None, None, :]  # (batch, 1, 1, keys): broadcast over heads and queries
        for block in self.blocks:
            x = block(x, mask.to(x.dtype))
        return self.head(x)


def _masked_batch(n, device):
    return (torch.randn(n, 128, 256, device=device), torch.randint(64, 129, (n,), device=device),
            torch.randint(0, 16, (n, 128), device=device))


@dstune.workload(global_batch_size=32, batch_size=8)
def masked_attention(ctx):
    """Four accumulated micro-batches of padded sequences with a key-padding mask."""
    return dstune.Workload(
        model=MaskedEncoder(),
        optimizer=lambda params, **kw: torch.optim.AdamW(params, lr=1e-3, **kw),
        batch=_masked_batch,
        loss=lambda model, b: F.cross_entropy(model(b[0], b[1]).flatten(0, 1).float(), b[2].flatten()),
    )
