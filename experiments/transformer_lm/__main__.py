"""python -m experiments.transformer_lm --workdir=DIR [--config=...:variant] [--config.key=value]"""

import os

import jax

import lab.data
from lab import configs, pipeline, train
from lab.data.subword import encode_splits
from lab.errors import ConfigValueError
from lab.tasks.language_model import (CausalLMTask, check_compute_dtype, check_tokenizer, gpt_config, run_tokenizer,
                                      sample_text, tokenizer_name)


def validate(config) -> None:
    """This experiment's own keys; the CLI checks them (and lab's) before `main` reads any data."""
    configs.check_block(config.model, "model", positive_ints=("num_layers", "num_heads", "width", "block_size"),
                        fractions=("dropout_rate",))
    configs.check_block(config, "", positive_ints=("eval_batches",))
    configs.check_block(config.sample, "sample", positive_ints=("num_tokens",))
    check_tokenizer(config)
    check_compute_dtype(config.model)


def main(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Trains the GPT of `config` on shakespeare_char in `workdir`; returns the results.

    With `tokenizer.name='bpe'` the text is re-encoded as subwords (the tokenizer trained on the
    train split at the first start and kept in the workdir); `bits_per_char` compares the two.
    """
    chars = lab.data.char_tokenizer(config.data_dir)
    splits = {s: lab.data.load(config.dataset, s, data_dir=config.data_dir)["tokens"]
              for s in ("train", "validation")}
    tokenizer = run_tokenizer(config, workdir, train_text=lambda: chars.decode(splits["train"]))
    chars_per_token = 1.0
    if tokenizer_name(config) == "bpe":
        text = {k: chars.decode(v) for k, v in splits.items()}
        splits = encode_splits(tokenizer, text)
        chars_per_token = len(text["validation"]) / len(splits["validation"])
    gpt_cfg = gpt_config(config.model, tokenizer.vocab_size)
    s = config.sample
    task = CausalLMTask(gpt_cfg, sample=lambda params, step, rng: sample_text(
        gpt_cfg, params, tokenizer, s.prompt, s.num_tokens, rng, s.temperature, s.top_k),
        chars_per_token=chars_per_token)
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
    block = config.model.block_size

    def eval_windows(tokens):
        # The same fixed windows at every eval (seeded apart from training), padded-batch style.
        windows = pipeline.WindowBatcher(tokens, block, config.eval_batch_size * config.eval_batches,
                                         seed=config.seed + 1).batch(0)
        return lambda: pipeline.padded_batches(windows, config.eval_batch_size, **shard)

    data = train.Data(
        train=pipeline.WindowBatcher(splits["train"], block, config.batch_size, config.seed, **shard),
        evals={"val": eval_windows(splits["validation"]), "train": eval_windows(splits["train"])},
    )
    return train.train_and_evaluate(config, workdir, task, data, allow_config_change=allow_config_change)


def export_spec(config, max_prompt_tokens: int | None = None, max_new_tokens: int | None = None):
    """The serving function of a run of `config` for `lab.export`: a prompt of p character ids
    (p <= max_prompt_tokens, padded to one of a few lengths, its true length `prompt_len`) -> the
    prompt and max_new_tokens sampled characters, from a seed, temperature (0: greedy) and top_k
    (vocab size: no filtering), the decode loop included. The limits default to half the block
    size each (`lab.export.generation_limits`)."""
    from lab.export import generation_limits, length_buckets
    from lab.task import ExportSpec
    from lab.models import decoding

    if tokenizer_name(config) != "char":
        raise ConfigValueError("lab.export takes character-level GPT runs only so far; this run uses subwords "
                               "(sample it with python -m experiments.transformer_lm.sample)")
    tokenizer = lab.data.char_tokenizer(config.data_dir)
    gpt_cfg = gpt_config(config.model, tokenizer.vocab_size)
    max_prompt, new_tokens = generation_limits(gpt_cfg.max_len, max_prompt_tokens, max_new_tokens)

    def sample(params, inputs):
        tokens = decoding.generate_traced(gpt_cfg, params, inputs["prompt"], new_tokens,
                                          jax.random.key(inputs["seed"]), inputs["temperature"], inputs["top_k"],
                                          prompt_len=inputs["prompt_len"])
        return {"tokens": tokens}

    return ExportSpec(sample, {"prompt": {"shape": ["b", "p"], "dtype": "int32"},
                               "seed": {"shape": [], "dtype": "uint32"},
                               "temperature": {"shape": [], "dtype": "float32"},
                               "top_k": {"shape": [], "dtype": "int32"}}, {
        "task": "generator",
        "dataset": config.dataset,
        "constraints": [f"p <= {max_prompt}"],
        "max_new_tokens": new_tokens,
        "limits": {"max_prompt_tokens": max_prompt, "max_new_tokens": new_tokens},
        "buckets": {"p": {"sizes": length_buckets(max_prompt), "length_input": "prompt_len"}},
        "tokenizer": {"type": "characters", "vocab": "".join(tokenizer.vocab), "max_len": gpt_cfg.max_len},
        "preprocessing": (f"a prompt of 1 to {max_prompt} characters as ids into tokenizer.vocab; "
                          f"the output holds the prompt, then {new_tokens} new ids; temperature >= 0 (0: greedy), "
                          f"top_k in 1..{tokenizer.vocab_size} ({tokenizer.vocab_size}: no filtering)"),
    })


if __name__ == "__main__":
    from experiments import cli
    cli.run(os.path.join(os.path.dirname(__file__), "config.py"), main, validate=validate, malloc_tuning=True,
            export_spec=export_spec)
