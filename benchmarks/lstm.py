"""LSTM train-step speed: lab's step for the forecaster and the chatbot recipes, against PyTorch.

    python -m benchmarks.lstm [--steps=N] [--rounds=3] [--configs=forecast,chatbot,chatbot_additive]
                              [--torch_python=PYTHON] [--torch_threads=0] [--out=FILE]

Configs (each lab's own step, `lab.train.build_train_step`: loss, grads, Adam, metrics, on random
data of the recipe's shapes):
  forecast          experiments/lstm_forecast's default config: LSTMRegressor(50) -> Dense(1) on
                    windows of 12 values, predict_change, batch 32, MSE, Adam 1e-3. Measured twice:
                    `forecast_relu` (the article's relu LSTM, the config's) and `forecast_tanh`.
  chatbot           experiments/lstm_chatbot's default config: Seq2Seq, embed 64, hidden 256, no
                    attention, batch 64, source and target rows of 96 ids (all real), Adam 1e-3,
                    gradient clipping at 1.0.
  chatbot_additive  its `additive` variant (additive attention over the encoder outputs).
For each: compile time, median step time (each step waited for), the mean time of steps run in a
row (how lab's loop runs them), examples/s (forecast) or target tokens/s (chatbot), and model
FLOP/s as a fraction of this machine's jit'd float32 matmul peak (`transformer_lm.matmul_peak`).
Model FLOPs per step: 3 x forward, forward = 2 * B * T * (F + H) * 4H per LSTM layer plus the
output layer (and, with attention, its query/key/output projections, score and context).

The yardstick runs side by side: `benchmarks/lstm_torch.py` (the same recipes in eager PyTorch,
`nn.LSTM(batch_first=True)`, PyTorch's default threads unless `--torch_threads`) under
`--torch_python` (a Python with torch; default: this one, skipped if it has no torch), in its
own process without lab's malloc settings. nn.LSTM has no relu, so the forecaster has three yardsticks: nn.LSTM (tanh), and a
Python loop over time with relu (the exact recipe) and with tanh. Pairings: forecast_relu against
the relu loop and nn.LSTM; forecast_tanh against nn.LSTM and the tanh loop; each chatbot against
its recipe. Measurements alternate, lab then PyTorch, for `--rounds` rounds; each side reports the
median of its round medians. Prints a table and writes JSON (default
`benchmarks/runs/<date>_<time>/lstm.json`; `--out=benchmarks/results/lstm.json`
updates the committed one).
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks import common
from benchmarks.transformer_lm import matmul_peak
from experiments.cli import ensure_malloc_env
from experiments.lstm_chatbot.config import get_config as chatbot_config
from experiments.lstm_forecast.config import get_config as forecast_config
from lab.models.lstm import LSTMRegressor
from lab.tasks import forecast, seq2seq

NUM_CHARS = 76  # the shakespeare_char vocabulary the chatbot reads (vocab_size 79 with PAD/BOS/EOS)

# config -> (lab rows, default timed steps per round, torch warm-up steps); the torch recipes
# are those the rows are paired with (PAIRINGS).
GROUPS = {
    "forecast": (("forecast_relu", "forecast_tanh"), 200, 10),
    "chatbot": (("chatbot",), 5, 1),
    "chatbot_additive": (("chatbot_additive",), 5, 1),
}
# lab row -> the torch recipes it is compared with (first: the headline pairing).
PAIRINGS = {
    "forecast_relu": ("forecast_manual_relu", "forecast_lstm"),
    "forecast_tanh": ("forecast_lstm", "forecast_manual_tanh"),
    "chatbot": ("chatbot",),
    "chatbot_additive": ("chatbot_additive",),
}


def lstm_flops(batch: int, steps: int, features: int, hidden: int) -> float:
    """Forward FLOPs of one LSTM layer: the input and recurrent matmuls into the 4 gates."""
    return 2.0 * batch * steps * (features + hidden) * 4 * hidden


def _forecast_setup(activation: str):
    """(config, task, 4 random batches, model FLOPs per step, info, torch shape flags) of the
    forecaster's default config with this LSTM activation."""
    config = forecast_config()
    config.num_train_steps = 100
    m = config.model
    model = LSTMRegressor(features=m.features, num_layers=m.num_layers, activation=activation)
    task = forecast.ForecastTask(model, config.timesteps, forecast.Scaler(0.0, 1.0),
                                 predict_change=m.predict_change)
    b, t = config.batch_size, config.timesteps
    rng = np.random.default_rng(0)
    batches = [{"inputs": rng.random((b, t, 1), np.float32), "target": rng.random((b,), np.float32)}
               for _ in range(4)]
    forward = sum(lstm_flops(b, t, 1 if i == 0 else m.features, m.features)
                  for i in range(m.num_layers)) + 2.0 * b * m.features
    shape = {"batch": b, "timesteps": t, "units": m.features}
    info = {"activation": activation, "layers": m.num_layers, "hidden": m.features,
            "timesteps": t, "batch": b, "unit": "examples", "units_per_step": b}
    return config, task, batches, 3 * forward, info, shape


def _chatbot_setup(variant: str | None):
    """(config, task, 4 random batches, model FLOPs per step, info, torch shape flags) of the
    chatbot's config `variant` (None: default), sources and targets all full length."""
    config = chatbot_config(variant)
    ids = seq2seq.Seq2SeqIds(NUM_CHARS)
    cfg = seq2seq.model_config(config.model, ids)
    task = seq2seq.Seq2SeqTask(cfg)
    b, s, t = config.batch_size, config.max_src, config.max_tgt
    rng = np.random.default_rng(0)
    batches = [{"src": rng.integers(0, NUM_CHARS, (b, s)).astype(np.int32),
                "src_len": np.full((b,), s, np.int32),
                "tgt_in": rng.integers(0, NUM_CHARS, (b, t)).astype(np.int32),
                "tgt_out": rng.integers(0, NUM_CHARS, (b, t)).astype(np.int32),
                "tgt_mask": np.ones((b, t), np.float32)} for _ in range(4)]
    e, h, v, a = cfg.embed_dim, cfg.hidden, cfg.vocab_size, cfg.attention_dim
    forward = 0.0
    for side_len in (s, t):  # encoder, decoder
        forward += sum(lstm_flops(b, side_len, e if i == 0 else h, h) for i in range(cfg.num_layers))
    forward += 2.0 * b * t * h * v  # the output layer
    if cfg.attention == "additive":
        forward += (2.0 * b * t * h * a + 2.0 * b * s * h * a  # query, key projections
                    + 2.0 * b * t * s * a  # v . tanh(q + k)
                    + 2.0 * b * t * s * h  # context
                    + 2.0 * b * t * 2 * h * h)  # W_c [h; ctx]
    shape = {"batch": b, "src_len": s, "tgt_len": t, "embed": e, "hidden": h, "vocab": v,
             "attention_dim": a}
    info = {"attention": cfg.attention, "layers": cfg.num_layers, "embed": e, "hidden": h,
            "src_len": s, "tgt_len": t, "batch": b, "vocab": v, "unit": "target tokens",
            "units_per_step": b * t}
    return config, task, batches, 3 * forward, info, shape


def lab_step(name: str):
    """Compiles lab's train step for lab row `name`; -> (info dict, run, torch shape flags)."""
    if name.startswith("forecast_"):
        config, task, batches, flops, info, shape = _forecast_setup(name.split("_", 1)[1])
    else:
        config, task, batches, flops, info, shape = _chatbot_setup(
            None if name == "chatbot" else name.split("_", 1)[1])
    run, compile_s, n_params = common.compiled_train_step(task, config, batches)
    info = dict(info, config=name, params=int(n_params), compile_s=compile_s,
                model_gflop_per_step=flops / 1e9)
    return info, run, shape


def bench_group(group: str, steps: int | None, rounds: int, torch_python: str | None,
                torch_threads: int = 0) -> list[dict]:
    """Measures the lab rows of config `group` against their torch recipes
    (`common.alternate_with_torch`); -> one row per lab row."""
    lab_names, default_steps, warmup = GROUPS[group]
    built = {name: lab_step(name) for name in lab_names}
    shape = next(iter(built.values()))[2]
    return common.alternate_with_torch({name: (info, run) for name, (info, run, _) in built.items()},
                                       {name: PAIRINGS[name] for name in lab_names}, "benchmarks.lstm_torch",
                                       shape, steps or default_steps, warmup, rounds, torch_python,
                                       torch_threads)


def main() -> None:
    """Parses the flags, measures each config, prints the table and saves the JSON."""
    ensure_malloc_env()  # measure the process the experiments run in
    args, groups, torch_python, torch_version = common.against_torch_flags(
        __doc__, tuple(GROUPS), "default: 200 forecast, 5 chatbot", "lstm.json")
    load_before = os.getloadavg()
    peak = matmul_peak()
    rows = [row for g in groups for row in bench_group(g, args.steps, args.rounds, torch_python,
                                                  args.torch_threads)]
    common.report_against_torch(rows, peak, load_before, torch_version, args.out, width=17)


if __name__ == "__main__":
    main()
