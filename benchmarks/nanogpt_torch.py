"""The yardstick for the GPT step: nanoGPT's shakespeare_char CPU recipe in eager PyTorch.

    python -m benchmarks.nanogpt_torch --recipes=NAME[,NAME...] [--steps=50] [--warmup=5] [--threads=0]
                                       [--layers=4 --heads=4 --width=128 --block=64 --batch=12] [--device=cpu]

Recipes (written for this benchmark to nanoGPT's recipe, not nanoGPT's own code; shapes default to
experiments/transformer_lm's default config, and `benchmarks/transformer_lm.py` passes each
config's explicitly):
  gpt_f32   a plain PyTorch GPT in float32: pre-LayerNorm blocks without biases, one fused qkv
            Linear, `scaled_dot_product_attention` (causal), exact GELU, tied output embedding,
            cross-entropy; AdamW (betas 0.9/0.99, weight decay 0.1 on matrices) with the learning
            rate set each step, gradient clipping at 1.0, and nanoGPT's `get_batch` (random windows
            gathered from a token array).
  gpt_bf16  the same step with the forward and the loss under `torch.autocast("cpu",
            dtype=torch.bfloat16)` (PyTorch's mixed precision; nanoGPT itself autocasts on GPUs
            only). Autocast runs the Linear layers, the attention and the tied-head matmul in
            bfloat16 (their float32 weights cast on the fly) and the cross-entropy in float32; the
            ops it does not list (the embeddings, the LayerNorms and residual adds of float32
            inputs) keep their inputs' dtype, so the residual stream stays float32, and GELU runs
            on the bfloat16 output of its Linear. The backward runs each op in its forward's dtype;
            parameters, their gradients, the clipping and AdamW's state stay float32. No gradient
            scaler (bfloat16 has float32's exponent range).
One timed step is what nanoGPT's loop does per iteration on a CPU: get_batch, forward, backward,
clip, optimizer step, zero_grad, and reading the loss.

Needs `torch` (any CPU build); `benchmarks/transformer_lm.py --torch_python=...` runs this in a
separate process (so that PyTorch's and XLA's thread pools never share the cores), with PyTorch's
default thread count. Prints one JSON line.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import torch_cli

VOCAB = 76  # the shakespeare_char vocabulary
RECIPES = ("gpt_f32", "gpt_bf16")


class Block(nn.Module):
    """Pre-LayerNorm transformer block without biases: x + attention(ln_1(x)), then + mlp(ln_2(x))."""

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
        """x_BxLxD -> x_BxLxD."""
        b, length, d = x_BxLxD.shape
        q, k, v = self.qkv(self.ln_1(x_BxLxD)).split(d, dim=2)
        q, k, v = (a.view(b, length, self.heads, d // self.heads).transpose(1, 2) for a in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x_BxLxD = x_BxLxD + self.out(y.transpose(1, 2).contiguous().view(b, length, d))
        return x_BxLxD + self.proj(F.gelu(self.fc(self.ln_2(x_BxLxD))))


class GPT(nn.Module):
    """Token + position embeddings -> blocks -> LayerNorm -> tied head; nanoGPT's initialisation."""

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
        """Tokens and next tokens -> the mean cross-entropy."""
        pos = torch.arange(tokens_BxL.shape[1], device=tokens_BxL.device)
        x = self.token(tokens_BxL) + self.position(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.token.weight.T  # tied output embedding
        return F.cross_entropy(logits.view(-1, VOCAB), targets_BxL.view(-1))


def measure(recipe: str, args) -> dict:
    """Median (and 10th percentile) time of `args.steps` nanoGPT iterations of `recipe`, after
    `args.warmup` untimed ones."""
    torch.manual_seed(0)
    block, batch = args.block, args.batch
    device = torch.device(args.device)
    model = GPT(args.layers, args.heads, args.width, block).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99))
    data = np.random.default_rng(0).integers(0, VOCAB, 1_000_000).astype(np.uint16)

    def get_batch():
        ix = torch.randint(len(data) - block - 1, (batch,))
        x = torch.stack([torch.from_numpy(data[i:i + block].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block].astype(np.int64)) for i in ix])
        return x.to(device), y.to(device)

    def context():
        if recipe == "gpt_bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    times = []
    for _ in range(args.warmup + args.steps):
        t = time.perf_counter()
        for group in opt.param_groups:  # nanoGPT sets the scheduled lr every iteration (same cost)
            group["lr"] = 1e-3
        x, y = get_batch()
        with context():
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # waits for the device; nanoGPT reads the loss every log_interval=1 iteration on this recipe
        times.append(time.perf_counter() - t)
    times = times[args.warmup:]
    median = float(np.median(times))
    return {"median_step_ms": median * 1e3, "p10_step_ms": float(np.percentile(times, 10)) * 1e3,
            "tokens_per_sec": batch * block / median}


def main() -> None:
    """Parses the flags, measures each recipe in turn and prints one JSON line."""
    parser = torch_cli.parser(__doc__, RECIPES, warmup=5)
    # Defaults: experiments/transformer_lm's default config (the benchmark passes each config's).
    for name, default in (("layers", 4), ("heads", 4), ("width", 128), ("block", 64), ("batch", 12)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--device", default="cpu", help="torch device: cpu, or cuda on a GPU")
    torch_cli.run(parser, RECIPES, measure)


if __name__ == "__main__":
    main()
