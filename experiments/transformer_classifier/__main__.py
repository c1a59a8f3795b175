"""python -m experiments.transformer_classifier --workdir=DIR [--config=...:variant] [--config.key=value]"""

import os

import numpy as np

import lab.data
from lab import configs, pipeline, progress, train
from lab.errors import ConfigValueError
from lab.provenance import read_run_config
from lab.models import encoder
from lab.tasks import language_model
from lab.tasks.classification import BinaryClassificationTask, ClassificationTask
from lab.tasks.language_model import encoder_config

LABELS = ("play", "genre")
# The encoder keys a pretraining run and the classifier starting from it must share: the
# checkpoint's shapes do not tell the heads or the attention mask.
ENCODER_KEYS = ("num_layers", "num_heads", "width", "max_len", "causal")
TASKS = ("play_genre", "comedy_tragedy")  # two softmax heads; or one sigmoid (the article's binary listing)


def validate(config) -> None:
    """This experiment's own keys; the CLI checks them (and lab's) before `main` reads any data."""
    configs.check_block(config.model, "model", positive_ints=("num_layers", "num_heads", "width", "max_len",
                                                               "head_hidden"),
                        fractions=("dropout_rate", "head_dropout"))
    configs.check_block(config, "", fractions=("label_smoothing",))
    if config.model.pooling not in encoder.POOLINGS:
        raise ConfigValueError(f"config.model.pooling={config.model.pooling!r}: use one of "
                               f"{', '.join(encoder.POOLINGS)}")
    language_model.check_tokenizer(config)
    if config.task not in TASKS:
        raise ConfigValueError(f"config.task={config.task!r}: use one of {', '.join(TASKS)}")
    check_pretraining_run(config)


def check_pretraining_run(config) -> None:
    """Refuses an `init_from` run whose encoder differs from ours in a key of ENCODER_KEYS."""
    path = os.path.join(config.get("init_from") or "", "config.json")
    if not config.get("init_from") or not os.path.isfile(path):
        return  # no pretraining, or no run there: lab.configs.validate names the missing run
    theirs = read_run_config(config.init_from, needs=("model",), what="config.init_from")["model"]
    for key in ENCODER_KEYS:
        ours, pretrained = config.model.get(key, False), theirs.get(key, False)
        if ours != pretrained:
            raise ConfigValueError(f"config.model.{key}={ours!r} but the pretraining run {config.init_from} has "
                                   f"{pretrained!r}: set --config.model.{key}={pretrained!r}")


def resolve_steps(config, num_train: int) -> None:
    """Fills num_train_steps (from num_epochs) and warmup (10%) where the config left them None."""
    if config.num_train_steps is None:
        config.num_train_steps = config.num_epochs * (num_train // config.batch_size)
    if config.optimizer.warmup_steps is None:
        config.optimizer.warmup_steps = max(1, config.num_train_steps // 10)


def run_tokenizer(config, workdir: str | None):
    """The run's tokenizer: characters, or subwords (`tokenizer.name='bpe'`) kept in the workdir,
    taken at the first start from the pretraining run (`init_from`) or trained on the train
    speeches alone."""
    def train_text():
        return lab.data.joined_speeches(lab.data.load(config.dataset, "train", data_dir=config.data_dir)["text"])
    return language_model.run_tokenizer(config, workdir, train_text=train_text,
                                        source_workdir=config.get("init_from") or None)


def build_model(config, tokenizer=None):
    """(the classifier module, the tokenizer (default: the characters), its special ids, the
    plays' dataset info)."""
    tokenizer = tokenizer or lab.data.char_tokenizer(config.data_dir)
    ids = encoder.encoder_token_ids(tokenizer.vocab_size)
    plays_info = lab.data.info(config.dataset, data_dir=config.data_dir)
    heads = {"tragedy": 1} if config.get("task") == "comedy_tragedy" else \
        {"play": plays_info["num_classes"], "genre": plays_info["num_genres"]}
    model = encoder.EncoderClassifier(
        encoder_config(config.model, tokenizer.vocab_size), num_classes=heads,
        hidden=config.model.head_hidden, head_dropout=config.model.head_dropout,
        pooling=config.model.get("pooling", "mean"))
    return model, tokenizer, ids, plays_info


def load_split(config, split: str, tokenizer, ids, limit: int | None = None) -> dict:
    """A split as arrays: inputs and token_mask (N, max_len) int32 (the first max_len tokens,
    padded), play (N,) and genre (N,) class ids; for the comedy_tragedy task only the comedies'
    and tragedies' speeches, with tragedy (N,) 0 or 1. `limit`: only its first `limit` speeches."""
    raw = lab.data.load(config.dataset, split, data_dir=config.data_dir)
    if config.get("task") == "comedy_tragedy":
        raw = lab.data.comedy_or_tragedy(raw)
    raw = {k: v[:limit] for k, v in raw.items()}
    inputs, token_mask = pipeline.encode_padded(tokenizer.encode, raw["text"], config.model.max_len, ids.pad_id)
    return {"inputs": inputs, "token_mask": token_mask,
            **{k: raw[k] for k in ("play", "genre", "tragedy") if k in raw}}


def main(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Fine-tunes (or trains from scratch) the speech classifier of `config`; returns the results.

    With `config.init_from`, the loop takes `params['encoder']` from that run's checkpoint at the
    first start only (`config.init_from_params`).
    """
    model, tokenizer, ids, plays_info = build_model(config, run_tokenizer(config, workdir))
    unit = "BPE tokens" if language_model.tokenizer_name(config) == "bpe" else "characters"
    with progress.phase(f"reading the speeches ({config.dataset} train, test and validation) and encoding them "
                        f"as {unit}", "read and encoded the speeches") as p:
        train_arrays = load_split(config, "train", tokenizer, ids)
        # Test first: the headline split. Validation is what `keep_best` selects a step on.
        read = config.eval_batches * config.eval_batch_size if config.eval_batches else None  # speeches an eval reads
        evals = {split: load_split(config, split, tokenizer, ids, read)
                 for split in ("test", "validation")}
        p.note = ", ".join(f"{k} {len(v['inputs']):,}" for k, v in {"train": train_arrays, **evals}.items()) + " speeches"
    resolve_steps(config, len(train_arrays["play"]))
    example = {k: train_arrays[k][:1] for k in ("inputs", "token_mask")}
    binary = config.get("task") == "comedy_tragedy"
    task = (BinaryClassificationTask if binary else ClassificationTask)(
        model, example, label_keys=("tragedy",) if binary else LABELS, extra_input_keys=("token_mask",),
        label_smoothing=config.get("label_smoothing", 0.0))
    data = train.epoch_data(train_arrays, evals, config,
                            class_names=None if binary else plays_info.get("class_names"))
    return train.train_and_evaluate(config, workdir, task, data, allow_config_change=allow_config_change)


def export_spec(config):
    """The serving function of a run of `config` for `lab.export`: character ids and their mask
    (the first max_len characters, padded) -> logits per play and per genre (the classifier
    task's own `export_spec`)."""
    if language_model.tokenizer_name(config) != "char" or config.get("task", "play_genre") != "play_genre":
        raise ConfigValueError("lab.export takes character-level play and genre classifiers only so far; this "
                               "run uses subwords or the comedy_tragedy task")
    model, tokenizer, ids, plays_info = build_model(config)
    length = config.model.max_len
    example = {k: np.zeros((1, length), np.int32) for k in ("inputs", "token_mask")}
    task = ClassificationTask(model, example, label_keys=LABELS, extra_input_keys=("token_mask",))
    return task.export_spec({
        "dataset": config.dataset,
        "class_names": {k: list(v) for k, v in plays_info["class_names"].items()},
        "tokenizer": {"type": "characters", "vocab": "".join(tokenizer.vocab), "pad_id": ids.pad_id,
                      "max_len": length},
        "preprocessing": (f"a speech's first {length} characters as ids into tokenizer.vocab (a character "
                          f"outside it cannot be encoded), padded with pad_id; token_mask 1 for a character, 0 for padding"),
    })


if __name__ == "__main__":
    from experiments import cli
    cli.run(os.path.join(os.path.dirname(__file__), "config.py"), main, validate=validate, malloc_tuning=True,
            export_spec=export_spec)
