"""The yardstick for the GPT step: nanoGPT's shakespeare_char CPU recipe in eager PyTorch.

    python -m benchmarks.nanogpt_torch [--steps=50] [--layers=4 --heads=4 --width=128 --block=64 --batch=12]

A plain PyTorch GPT written for this benchmark to nanoGPT's recipe (not nanoGPT's own code):
pre-LayerNorm blocks without biases, one fused qkv Linear, `scaled_dot_product_attention`
(causal), exact GELU, tied output embedding, AdamW (betas 0.9/0.99, weight decay 0.1 on matrices)
with the learning rate set each step, gradient clipping at 1.0, and nanoGPT's `get_batch`
(random windows gathered from a token array). One timed step is what nanoGPT's loop does per
iteration on a CPU: get_batch, forward, backward, clip, optimizer step, zero_grad.

Needs `torch` (any CPU build); `benchmarks/transformer_lm.py --torch_python=...` runs this in a
separate process (so that PyTorch's and XLA's thread pools never share the cores) and prints the
two side by side. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 76  # the shakespeare_char vocabulary


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width, bias=False)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)
        self.ln_2 = nn.LayerNorm(width, bias=False)
        self.fc = nn.Linear(width, 4 * width, bias=False)
        self.proj = nn.Linear(4 * width, width, bias=False)

    def forward(self, x_BxLxD):
        b, length, d = x_BxLxD.shape
        q, k, v = self.qkv(self.ln_1(x_BxLxD)).split(d, dim=2)
        q, k, v = (a.view(b, length, self.heads, d // self.heads).transpose(1, 2) for a in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x_BxLxD = x_BxLxD + self.out(y.transpose(1, 2).contiguous().view(b, length, d))
        return x_BxLxD + self.proj(F.gelu(self.fc(self.ln_2(x_BxLxD))))


class GPT(nn.Module):
    def __init__(self, layers: int, heads: int, width: int, block: int):
        super().__init__()
        self.token = nn.Embedding(VOCAB, width)
        self.position = nn.Embedding(block, width)
        self.blocks = nn.ModuleList([Block(width, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(width, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("out.weight", "proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, tokens_BxL, targets_BxL):
        pos = torch.arange(tokens_BxL.shape[1])
        x = self.token(tokens_BxL) + self.position(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.token.weight.T  # tied output embedding
        return F.cross_entropy(logits.view(-1, VOCAB), targets_BxL.view(-1))


def measure(layers: int, heads: int, width: int, block: int, batch: int, steps: int) -> dict:
    """Median (and 10th percentile) time of `steps` nanoGPT iterations, after 5 warm-up ones."""
    torch.manual_seed(0)
    model = GPT(layers, heads, width, block)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99))
    data = np.random.default_rng(0).integers(0, VOCAB, 1_000_000).astype(np.uint16)

    def get_batch():
        ix = torch.randint(len(data) - block - 1, (batch,))
        x = torch.stack([torch.from_numpy(data[i:i + block].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block].astype(np.int64)) for i in ix])
        return x, y

    times = []
    for _ in range(steps + 5):
        t = time.perf_counter()
        for group in opt.param_groups:  # nanoGPT sets the scheduled lr every iteration (same cost)
            group["lr"] = 1e-3
        x, y = get_batch()
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT reads the loss every log_interval=1 iteration on this recipe
        times.append(time.perf_counter() - t)
    times = times[5:]
    median = float(np.median(times))
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "median_step_ms": median * 1e3, "p10_step_ms": float(np.percentile(times, 10)) * 1e3,
            "tokens_per_sec": batch * block / median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    # Defaults: experiments/transformer_lm's default config (the benchmark passes each config's).
    for name, default in (("layers", 4), ("heads", 4), ("width", 128), ("block", 64), ("batch", 12)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    print(json.dumps(measure(args.layers, args.heads, args.width, args.block, args.batch, args.steps)))


if __name__ == "__main__":
    main()
