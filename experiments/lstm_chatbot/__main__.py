"""python -m experiments.lstm_chatbot --workdir=DIR [--config=...:variant] [--config.key=value]"""

import os

import lab.data
from lab import configs, progress, train
from lab.errors import ConfigValueError
from lab.models.lstm import ACTIVATIONS
from lab.tasks import seq2seq


def validate(config) -> None:
    """This experiment's own keys; the CLI checks them (and lab's) before `main` reads any data."""
    configs.check_block(config, "", positive_ints=("max_src", "max_tgt"))
    configs.check_block(config.model, "model", positive_ints=("embed_dim", "hidden", "num_layers",
                                                              "attention_dim"))
    configs.check_block(config.sample, "sample", positive_ints=("num_prompts", "max_new_tokens"))
    if config.dataset != "shakespeare_dialogue":
        raise ConfigValueError(f"config.dataset={config.dataset!r}: this experiment reads shakespeare_dialogue pairs")
    if config.model.attention not in ("none", "additive", "dot"):
        raise ConfigValueError(f"config.model.attention={config.model.attention!r}: use none, additive or dot")
    if config.model.activation not in ACTIVATIONS:
        raise ConfigValueError(f"config.model.activation={config.model.activation!r}: use one of "
                               f"{', '.join(ACTIVATIONS)}")
    if config.sample.temperature < 0 or config.sample.top_k < 0:
        raise ConfigValueError("config.sample.temperature and config.sample.top_k must be >= 0")


def build(config):
    """(tokenizer, token ids, the model's Seq2SeqConfig) of a chatbot config (also used by `chat`)."""
    tokenizer = lab.data.char_tokenizer(config.data_dir)
    ids = seq2seq.Seq2SeqIds(tokenizer.vocab_size)
    return tokenizer, ids, seq2seq.model_config(config.model, ids)


def main(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Trains the chatbot of `config` on the dialogue pairs in `workdir`; returns the results."""
    tokenizer, ids, model_cfg = build(config)
    rows = {}
    with progress.phase(f"reading the dialogue pairs ({config.dataset} train and validation) and encoding "
                        f"them as characters", "read and encoded the dialogue pairs") as phase:
        for split in ("train", "validation"):
            pairs = lab.data.load(config.dataset, split, data_dir=config.data_dir)
            rows[split] = seq2seq.encode_pairs(tokenizer.encode, list(pairs["prompt"]), list(pairs["reply"]),
                                               config.max_src, config.max_tgt, ids)
            if split == "validation":
                prompts = [str(p) for p in pairs["prompt"][:config.sample.num_prompts]]
        phase.note = ", ".join(f"{split} {len(r['src']):,} pairs" for split, r in rows.items())
    s = config.sample
    sample_rows = {k: rows["validation"][k][:s.num_prompts] for k in ("src", "src_len")}
    task = seq2seq.Seq2SeqTask(model_cfg, samples=dict(
        tokenizer=tokenizer, rows=sample_rows, prompts=prompts, max_new_tokens=s.max_new_tokens,
        temperature=s.temperature, top_k=s.top_k or None))
    data = train.epoch_data(rows["train"], {"val": rows["validation"]}, config)
    return train.train_and_evaluate(config, workdir, task, data, allow_config_change=allow_config_change)


def export_spec(config, max_new_tokens: int | None = None):
    """The serving function of a run of `config` for `lab.export`: encoded prompts (the last
    max_src - 1 characters + EOS, padded) -> max_new_tokens (default sample.max_new_tokens) reply
    ids and the reply lengths (tokens before EOS), from a seed, temperature (0: greedy) and top_k."""
    import jax

    from lab.task import ExportSpec
    from lab.models import lstm

    tokenizer, ids, model_cfg = build(config)
    new_tokens = config.sample.max_new_tokens if max_new_tokens is None else max_new_tokens
    if new_tokens < 1:
        raise ConfigValueError(f"--max_new_tokens={new_tokens}: the reply needs at least 1 token")

    def reply(params, inputs):
        tokens, lengths, _ = lstm.generate_traced(model_cfg, params, inputs["src"], inputs["src_len"], new_tokens,
                                                  jax.random.key(inputs["seed"]), inputs["temperature"],
                                                  inputs["top_k"])
        return {"tokens": tokens, "lengths": lengths}

    return ExportSpec(reply, {"src": {"shape": ["b", config.max_src], "dtype": "int32"},
                              "src_len": {"shape": ["b"], "dtype": "int32"},
                              "seed": {"shape": [], "dtype": "uint32"},
                              "temperature": {"shape": [], "dtype": "float32"},
                              "top_k": {"shape": [], "dtype": "int32"}}, {
        "task": "chatbot",
        "dataset": config.dataset,
        "max_new_tokens": new_tokens,
        # A longer prompt is not refused: it keeps its last characters, as in training.
        "limits": {"max_new_tokens": new_tokens, "prompt_tokens_read": config.max_src - 1},
        "tokenizer": {"type": "characters", "vocab": "".join(tokenizer.vocab), "pad_id": ids.pad,
                      "bos_id": ids.bos, "eos_id": ids.eos, "max_src": config.max_src},
        "preprocessing": (f"src: the prompt's last {config.max_src - 1} characters as ids into tokenizer.vocab, "
                          f"then eos_id, padded with pad_id to {config.max_src}; src_len: that row's length; "
                          f"the reply is tokens[:lengths] (ids >= len(vocab) are special: leave them out)"),
    })


if __name__ == "__main__":
    from experiments import cli
    cli.run(os.path.join(os.path.dirname(__file__), "config.py"), main, validate=validate, malloc_tuning=True,
            export_spec=export_spec)
