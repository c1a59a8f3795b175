"""python -m experiments.transformer_classifier --workdir=DIR [--config=...:variant] [--config.key=value]"""

import os

import jax

import lab.data
from lab import checkpoint, pipeline, train
from lab.models import transformer
from lab.tasks.classification import ClassificationTask
from experiments.transformer_mlm.__main__ import encoder_model_config

LABELS = ("play", "genre")


def resolve_steps(config, num_train: int) -> None:
    """Fills num_train_steps (from num_epochs) and warmup (10%) where the config left them None."""
    if config.num_train_steps is None:
        config.num_train_steps = config.num_epochs * (num_train // config.batch_size)
    if config.optimizer.warmup_steps is None:
        config.optimizer.warmup_steps = max(1, config.num_train_steps // 10)


def main(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Fine-tunes (or trains from scratch) the speech classifier of `config`; returns the results."""
    tokenizer = lab.data.char_tokenizer(config.data_dir)
    ids = transformer.encoder_token_ids(tokenizer.vocab_size)
    plays_info = lab.data.info(config.dataset, data_dir=config.data_dir)

    def arrays(split):
        raw = lab.data.load(config.dataset, split, data_dir=config.data_dir)
        inputs, token_mask = pipeline.encode_padded(tokenizer.encode, raw["text"], config.model.max_len, ids.pad_id)
        return {"inputs": inputs, "token_mask": token_mask, "play": raw["play"], "genre": raw["genre"]}

    train_arrays, test_arrays = arrays("train"), arrays("test")
    resolve_steps(config, len(train_arrays["play"]))
    model_config = encoder_model_config(config.model, tokenizer.vocab_size)
    model = transformer.EncoderClassifier(
        model_config, num_classes={"play": plays_info["num_classes"], "genre": plays_info["num_genres"]},
        hidden=config.model.head_hidden, head_dropout=config.model.head_dropout)
    example = {k: train_arrays[k][:1] for k in ("inputs", "token_mask")}
    task = ClassificationTask(model, example, label_keys=LABELS, extra_input_keys=("token_mask",))

    if config.init_from:
        # Fresh head, pretrained encoder: the sub-tree is checked (names, shapes, dtypes) first.
        abstract = jax.eval_shape(task.fresh_params, jax.random.key(0))
        encoder = checkpoint.load_params_subtree(config.init_from, ("encoder",), abstract["encoder"])

        def init_params(rng):
            return dict(task.fresh_params(rng), encoder=jax.tree.map(jax.numpy.asarray, encoder))

        task = ClassificationTask(model, example, label_keys=LABELS, extra_input_keys=("token_mask",),
                                  init_params_fn=init_params)

    data = train.epoch_data(train_arrays, {"test": test_arrays}, config)
    return train.train_and_evaluate(config, workdir, task, data, allow_config_change=allow_config_change)


if __name__ == "__main__":
    from experiments import cli
    cli.run(os.path.join(os.path.dirname(__file__), "config.py"), main, malloc_tuning=True)
