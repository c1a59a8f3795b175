"""python -m experiments.transformer_lm --workdir=DIR [--config=...:variant] [--config.key=value]"""

import os

import jax
import numpy as np

import lab.data
from lab import pipeline, train
from lab.models import transformer
from lab.tasks.language_model import CausalLMTask


def model_config(config, vocab_size: int) -> transformer.TransformerConfig:
    """The GPT's TransformerConfig from the experiment config.

    A workdir written before `model.use_bias` existed holds a model with biases: absent means True.
    """
    m = config.model
    return transformer.TransformerConfig(
        vocab_size=vocab_size, num_layers=m.num_layers, num_heads=m.num_heads, width=m.width,
        max_len=m.block_size, dropout_rate=m.dropout_rate, use_bias=m.get("use_bias", True))


def sample_text(gpt_config, params, tokenizer, prompt: str, num_tokens: int, rng,
                temperature: float, top_k: int | None) -> str:
    """`prompt` followed by `num_tokens` sampled characters."""
    ids = tokenizer.encode(prompt).astype(np.int32)[None]
    out = transformer.generate_long(gpt_config, params, ids, num_tokens, rng,
                                    temperature=temperature, top_k=top_k or None)
    return tokenizer.decode(np.asarray(out[0]))


def main(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Trains the GPT of `config` on shakespeare_char in `workdir`; returns the results."""
    tokenizer = lab.data.char_tokenizer(config.data_dir)
    splits = {s: lab.data.load(config.dataset, s, data_dir=config.data_dir)["tokens"]
              for s in ("train", "validation")}
    gpt_config = model_config(config, tokenizer.vocab_size)
    s = config.sample
    task = CausalLMTask(gpt_config, sample=lambda params, step, rng: sample_text(
        gpt_config, params, tokenizer, s.prompt, s.num_tokens, rng, s.temperature, s.top_k))
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


if __name__ == "__main__":
    from experiments import cli
    cli.run(os.path.join(os.path.dirname(__file__), "config.py"), main, malloc_tuning=True)
