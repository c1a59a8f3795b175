"""python -m experiments.transformer_mlm --workdir=DIR [--config=...:variant] [--config.key=value]"""

import os

import jax
import numpy as np

import lab.data
from lab import pipeline, train
from lab.models import transformer
from lab.tasks.language_model import MaskedLMTask


def encoder_model_config(model_cfg, num_chars: int) -> transformer.TransformerConfig:
    """The encoder's TransformerConfig: chars 0..N-1, PAD = N, MASK = N + 1."""
    return transformer.TransformerConfig(
        vocab_size=transformer.encoder_token_ids(num_chars).vocab_size,
        num_layers=model_cfg.num_layers, num_heads=model_cfg.num_heads, width=model_cfg.width,
        max_len=model_cfg.max_len, dropout_rate=model_cfg.dropout_rate)


PRETRAINING_DATASETS = ("shakespeare_plays", "shakespeare_char")


def text_stream(config, tokenizer, split: str) -> np.ndarray:
    """The pretraining text of `split` as one stream of token ids (the tokenizer's integer dtype).

    shakespeare_plays: that split's speeches (no speaker names), joined by blank lines, so a
    classifier fine-tuned from this run never had its validation or test speeches in
    pretraining. shakespeare_char: the LM corpus (speaker names included; its train 90% holds
    most of the plays' test speeches, unlabelled).
    """
    if config.dataset == "shakespeare_plays":
        texts = lab.data.load(config.dataset, split, data_dir=config.data_dir)["text"]
        return tokenizer.encode("\n\n".join(str(t) for t in texts))
    if config.dataset == "shakespeare_char":
        return lab.data.load(config.dataset, split, data_dir=config.data_dir)["tokens"]
    raise ValueError(f"config.dataset={config.dataset!r} is not a pretraining text; "
                     f"use one of {', '.join(PRETRAINING_DATASETS)}")


def main(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Pretrains a MaskedLM on windows of a Shakespeare text in `workdir`; returns the results."""
    tokenizer = lab.data.char_tokenizer(config.data_dir)
    num_chars = tokenizer.vocab_size
    splits = {s: text_stream(config, tokenizer, s) for s in ("train", "validation")}
    model_config = encoder_model_config(config.model, num_chars)
    eval_key = jax.random.fold_in(jax.random.key(config.seed), 3)  # fixed masks for every eval
    task = MaskedLMTask(model_config, transformer.encoder_token_ids(num_chars), eval_key, config.mask_rate)
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
    length = config.model.max_len
    val = pipeline.WindowBatcher(splits["validation"], length, config.eval_batch_size * config.eval_batches,
                                 seed=config.seed + 1).batch(0)
    val = {"inputs": val["inputs"]}
    data = train.Data(
        train=pipeline.WindowBatcher(splits["train"], length, config.batch_size, config.seed,
                                     inputs_only=True, **shard),
        evals={"val": lambda: pipeline.padded_batches(val, config.eval_batch_size, **shard)},
    )
    return train.train_and_evaluate(config, workdir, task, data, allow_config_change=allow_config_change)


if __name__ == "__main__":
    from experiments import cli
    cli.run(os.path.join(os.path.dirname(__file__), "config.py"), main, malloc_tuning=True)
