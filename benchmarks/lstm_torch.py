"""The yardstick for the LSTM steps: the forecaster and chatbot recipes in eager PyTorch.

    python -m benchmarks.lstm_torch --recipes=NAME[,NAME...] [--steps=50] [--warmup=3] [--threads=0] [shape flags]

Recipes (written for this benchmark, not taken from any project; shapes default to the lab
experiments' default configs, and `benchmarks/lstm.py` passes them explicitly):
  forecast_lstm         `nn.LSTM(1, 50, batch_first=True)` (PyTorch's fused oneDNN kernel; tanh,
                        the only activation it has) -> Linear(50, 1) on the last output; the window
                        taken relative to its last value and the change predicted (lab's
                        predict_change); MSE, Adam lr 1e-3, no clipping.
  forecast_manual_relu  the same recipe with the article's relu LSTM, which nn.LSTM cannot run: a
                        Python loop over time, one fused h @ W_hh matmul per step (the input
                        projection of all steps done at once before the loop, as lab does).
  forecast_manual_tanh  that loop with tanh: what the loop costs next to nn.LSTM's kernel.
  chatbot               nn.Embedding(79, 64) shared by an encoder nn.LSTM(64, 256) and a decoder
                        nn.LSTM(64, 256) started from the encoder's final (h, c); Linear(256, 79);
                        cross-entropy over the target mask; Adam lr 1e-3, clip_grad_norm 1.0.
  chatbot_additive      the same with lab's attention on top of the decoder outputs: scores
                        v . tanh(W_q h_t + W_k s_s + b) over the real source positions, softmax,
                        context = weights @ encoder outputs, o_t = tanh(W_c [h_t; ctx_t]),
                        logits = Linear(o_t).
One timed step: forward, backward, (clip), optimizer step, zero_grad, on one of 4 random batches
made beforehand (sources all full length, so no packing is needed).

Needs `torch` (any CPU build); `benchmarks/lstm.py --torch_python=...` runs this in a separate
process (so that PyTorch's and XLA's thread pools never share the cores), with PyTorch's default
thread count. Prints one JSON line.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import torch_cli

RECIPES = ("forecast_lstm", "forecast_manual_relu", "forecast_manual_tanh", "chatbot",
           "chatbot_additive")


class LoopLSTM(nn.Module):
    """An LSTM layer as a Python loop over time, for activations nn.LSTM lacks (relu).

    Gate math and layout as lab.models.lstm's cell (columns [i | f | g | o]; sigmoid gates;
    `activation` on the candidate and on the cell output). x_BxTxF -> final h_BxH.
    """

    def __init__(self, features: int, hidden: int, activation: str):
        super().__init__()
        self.ih = nn.Linear(features, 4 * hidden)
        self.hh = nn.Linear(hidden, 4 * hidden, bias=False)
        self.hidden = hidden
        self.act = {"relu": torch.relu, "tanh": torch.tanh}[activation]

    def forward(self, x_BxTxF):
        """x_BxTxF -> h_BxH after the last step (zero initial state)."""
        b, t, _ = x_BxTxF.shape
        xw_BxTx4H = self.ih(x_BxTxF)  # every step's input projection at once
        h_BxH = c_BxH = x_BxTxF.new_zeros(b, self.hidden)
        for step in range(t):
            z_Bx4H = xw_BxTx4H[:, step] + self.hh(h_BxH)
            zi, zf, zg, zo = z_Bx4H.chunk(4, dim=1)
            c_BxH = torch.sigmoid(zf) * c_BxH + torch.sigmoid(zi) * self.act(zg)
            h_BxH = torch.sigmoid(zo) * self.act(c_BxH)
        return h_BxH


class Forecaster(nn.Module):
    """LSTM(units) -> Linear(units, 1) on the last step, predicting the change from the window's
    last value (the window is taken relative to it)."""

    def __init__(self, units: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "lstm":
            self.lstm = nn.LSTM(1, units, batch_first=True)
        else:
            self.lstm = LoopLSTM(1, units, activation=kind)
        self.head = nn.Linear(units, 1)

    def forward(self, x_BxTx1):
        """x_BxTx1 -> predictions_B."""
        last_Bx1x1 = x_BxTx1[:, -1:, :]
        x_BxTx1 = x_BxTx1 - last_Bx1x1
        if self.kind == "lstm":
            _, (h_1xBxH, _) = self.lstm(x_BxTx1)
            h_BxH = h_1xBxH[0]
        else:
            h_BxH = self.lstm(x_BxTx1)
        return last_Bx1x1[:, 0, 0] + self.head(h_BxH)[:, 0]


class Seq2Seq(nn.Module):
    """Embedding -> LSTM encoder -> LSTM decoder (from the encoder's final state) -> [attention]
    -> Linear(vocab); the attention as lab.models.lstm.Seq2Seq's 'additive'."""

    def __init__(self, vocab: int, embed: int, hidden: int, attention_dim: int, attention: bool):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.encoder = nn.LSTM(embed, hidden, batch_first=True)
        self.decoder = nn.LSTM(embed, hidden, batch_first=True)
        self.attention = attention
        if attention:
            self.attn_query = nn.Linear(hidden, attention_dim, bias=False)
            self.attn_key = nn.Linear(hidden, attention_dim)
            self.attn_score = nn.Linear(attention_dim, 1, bias=False)
            self.attn_out = nn.Linear(2 * hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, src_BxS, src_len_B, tgt_in_BxT):
        """Teacher forcing -> logits_BxTxV."""
        memory_BxSxH, carry = self.encoder(self.embed(src_BxS))
        h_BxTxH, _ = self.decoder(self.embed(tgt_in_BxT), carry)
        if self.attention:
            q_BxTx1xA = self.attn_query(h_BxTxH)[:, :, None, :]
            k_Bx1xSxA = self.attn_key(memory_BxSxH)[:, None, :, :]
            scores_BxTxS = self.attn_score(torch.tanh(q_BxTx1xA + k_Bx1xSxA))[..., 0]
            s = src_BxS.shape[1]
            real_Bx1xS = (torch.arange(s)[None, :] < src_len_B[:, None])[:, None, :]
            scores_BxTxS = scores_BxTxS.masked_fill(~real_Bx1xS, torch.finfo(torch.float32).min)
            attn_BxTxS = torch.softmax(scores_BxTxS, dim=-1)
            ctx_BxTxH = torch.bmm(attn_BxTxS, memory_BxSxH)
            h_BxTxH = torch.tanh(self.attn_out(torch.cat([h_BxTxH, ctx_BxTxH], dim=-1)))
        return self.head(h_BxTxH)


def _forecast(kind: str, args, rng):
    """(model, 4 random batches, loss of a batch, clip norm) of the forecaster; kind: 'lstm'
    (nn.LSTM), 'relu' or 'tanh' (the loop)."""
    model = Forecaster(args.units, kind)
    batches = [(torch.from_numpy(rng.random((args.batch, args.timesteps, 1), np.float32)),
                torch.from_numpy(rng.random((args.batch,), np.float32))) for _ in range(4)]

    def loss_fn(batch):
        x, y = batch
        return F.mse_loss(model(x), y)

    return model, batches, loss_fn, 0.0


def _chatbot(attention: bool, args, rng):
    """(model, 4 random batches, loss of a batch, clip norm) of the chatbot, full-length rows."""
    model = Seq2Seq(args.vocab, args.embed, args.hidden, args.attention_dim, attention)
    b, s, t = args.batch, args.src_len, args.tgt_len

    def ids(*shape):
        return torch.from_numpy(rng.integers(0, args.vocab - 3, shape).astype(np.int64))

    batches = [(ids(b, s), torch.full((b,), s, dtype=torch.int64), ids(b, t), ids(b, t),
                torch.ones(b, t)) for _ in range(4)]

    def loss_fn(batch):
        src, src_len, tgt_in, tgt_out, mask = batch
        logits = model(src, src_len, tgt_in)
        nll = F.cross_entropy(logits.reshape(-1, args.vocab), tgt_out.reshape(-1), reduction="none")
        return (nll * mask.reshape(-1)).sum() / mask.sum()

    return model, batches, loss_fn, 1.0


def measure(recipe: str, args) -> dict:
    """Median (and 10th percentile) time of `args.steps` train steps of `recipe`, after
    `args.warmup` untimed ones."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if recipe.startswith("forecast_"):
        model, batches, loss_fn, clip = _forecast(recipe.rsplit("_", 1)[-1], args, rng)
    else:
        model, batches, loss_fn, clip = _chatbot(recipe == "chatbot_additive", args, rng)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        loss = loss_fn(batches[i % 4])
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    times = times[args.warmup:]
    return {"median_step_ms": float(np.median(times)) * 1e3,
            "p10_step_ms": float(np.percentile(times, 10)) * 1e3,
            "params": sum(p.numel() for p in model.parameters()),
            "final_loss": float(loss.detach())}


def main() -> None:
    """Parses the flags, measures each recipe in turn and prints one JSON line."""
    parser = torch_cli.parser(__doc__, RECIPES, warmup=3)
    # Defaults: experiments/lstm_forecast's and experiments/lstm_chatbot's default configs.
    for name, default in (("batch", 32), ("timesteps", 12), ("units", 50), ("vocab", 79),
                          ("embed", 64), ("hidden", 256), ("attention_dim", 64), ("src_len", 96),
                          ("tgt_len", 96)):
        parser.add_argument(f"--{name}", type=int, default=default)
    torch_cli.run(parser, RECIPES, measure)


if __name__ == "__main__":
    main()
