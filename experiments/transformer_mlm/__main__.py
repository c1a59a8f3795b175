"""python -m experiments.transformer_mlm --workdir=DIR [--config=...:variant] [--config.key=value]"""

import os

import jax

import lab.data
from lab import configs, pipeline, progress, train
from lab.data.subword import encode_splits
from lab.errors import ConfigValueError
from lab.models import encoder
from lab.tasks.language_model import EncoderLMTask, check_tokenizer, encoder_config, run_tokenizer

PRETRAINING_DATASETS = ("shakespeare_plays", "shakespeare_char")


def validate(config) -> None:
    """This experiment's own keys; the CLI checks them (and lab's) before `main` reads any data."""
    if config.dataset not in PRETRAINING_DATASETS:
        raise ConfigValueError(f"config.dataset={config.dataset!r} is not a pretraining text; "
                               f"use one of {', '.join(PRETRAINING_DATASETS)}")
    configs.check_block(config.model, "model", positive_ints=("num_layers", "num_heads", "width", "max_len"),
                        fractions=("dropout_rate",))
    configs.check_block(config, "", positive_ints=("eval_batches",), fractions=("mask_rate",))
    check_tokenizer(config)


def pretraining_text(config, split: str) -> str:
    """The pretraining text of `split`.

    shakespeare_plays: that split's speeches (no speaker names), joined by blank lines, so a
    classifier fine-tuned from this run never had its validation or test speeches in
    pretraining. shakespeare_char: the LM corpus (speaker names included; its train 90% holds
    most of the plays' test speeches, unlabelled).
    """
    if config.dataset == "shakespeare_plays":
        return lab.data.joined_speeches(lab.data.load(config.dataset, split, data_dir=config.data_dir)["text"])
    chars = lab.data.char_tokenizer(config.data_dir)
    return chars.decode(lab.data.load(config.dataset, split, data_dir=config.data_dir)["tokens"])


def main(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Pretrains an encoder on windows of a Shakespeare text in `workdir` (masked LM, or
    next-token prediction with `model.causal`); returns the results.

    With `tokenizer.name='bpe'` the text is subwords: the tokenizer is trained on the train
    split's text at the first start and kept in the workdir (a classifier starting from this run
    takes it from there).
    """
    with progress.phase(f"reading the pretraining text ({config.dataset} train and validation)",
                        "read the pretraining text") as p:
        text = {s: pretraining_text(config, s) for s in ("train", "validation")}
        p.note = ", ".join(f"{s} {len(t):,} characters" for s, t in text.items())
    tokenizer = run_tokenizer(config, workdir, train_text=lambda: text["train"])
    num_chars = tokenizer.vocab_size
    splits = encode_splits(tokenizer, text)
    task = EncoderLMTask(encoder_config(config.model, num_chars), encoder.encoder_token_ids(num_chars),
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
