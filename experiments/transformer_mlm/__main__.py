"""python -m experiments.transformer_mlm --workdir=DIR [--config=...:variant] [--config.key=value]"""

import os

import jax
import numpy as np

import lab.data
from lab import configs, pipeline, train
from lab.errors import ConfigValueError
from lab.models import transformer
from lab.tasks.language_model import MaskedLMTask, encoder_config

PRETRAINING_DATASETS = ("shakespeare_plays", "shakespeare_char")


def validate(config) -> None:
    """This experiment's own keys; the CLI checks them (and lab's) before `main` reads any data."""
    if config.dataset not in PRETRAINING_DATASETS:
        raise ConfigValueError(f"config.dataset={config.dataset!r} is not a pretraining text; "
                               f"use one of {', '.join(PRETRAINING_DATASETS)}")
    configs.check_block(config.model, "model", positive_ints=("num_layers", "num_heads", "width", "max_len"),
                        fractions=("dropout_rate",))
    configs.check_block(config, "", positive_ints=("eval_batches",), fractions=("mask_rate",))


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
    return lab.data.load(config.dataset, split, data_dir=config.data_dir)["tokens"]


def main(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Pretrains a MaskedLM on windows of a Shakespeare text in `workdir`; returns the results."""
    tokenizer = lab.data.char_tokenizer(config.data_dir)
    num_chars = tokenizer.vocab_size
    splits = {s: text_stream(config, tokenizer, s) for s in ("train", "validation")}
    task = MaskedLMTask(encoder_config(config.model, num_chars), transformer.encoder_token_ids(num_chars),
                        config.mask_rate)
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
    cli.run(os.path.join(os.path.dirname(__file__), "config.py"), main, validate=validate, malloc_tuning=True)
