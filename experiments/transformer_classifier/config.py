"""Configs of the speech classifier (play and genre). Select with `--config=experiments/transformer_classifier/config.py:NAME`.

What they are for: what a small Transformer encoder, from scratch or pretrained, learns of a
speech's play and genre from its first 128 characters. The seed recipe: encoder ->
Dense(512, relu) -> Dropout(0.1) -> output layers (here two: the play, 37 classes, and its genre,
3), Adam, 3 epochs. Its lr 3e-5 (constant) is too slow for this budget, so every variant here
uses Adam 3e-4 with 10% warmup and a cosine decay instead (BUILD_NOTES.md has the comparison).
The measured numbers live in experiments/reference_results.json (README's results table is
generated from it); each variant names its row, and the closing summary quotes it.

  scratch     python -m experiments.transformer_classifier --workdir=runs/speech_classifier
              (the default) the seed's recipe on characters, the encoder from random init. Row:
              speech_classifier_char (it also holds the TF-IDF + logistic regression baseline on
              the same characters).
  pretrained  python -m experiments.transformer_classifier --workdir=runs/classifier_pretrained --config=experiments/transformer_classifier/config.py:pretrained
              the encoder from a masked-LM run, a new head: what pretraining is worth. The run is
              transformer_mlm beside the workdir (runs/transformer_mlm here), or
              --config.init_from=PATH (relative to the current folder). No row of its own; its
              summary quotes the scratch row, speech_classifier_char.
  frozen      python -m experiments.transformer_classifier --workdir=runs/classifier_frozen --config=experiments/transformer_classifier/config.py:frozen
              as pretrained, the encoder frozen: only the head trains (optax.multi_transform).
              No row of its own; its summary quotes the scratch row, speech_classifier_char.
  scratch_bpe, pretrained_bpe, frozen_bpe
              python -m experiments.transformer_classifier --workdir=runs/classifier_pretrained_bpe --config=experiments/transformer_classifier/config.py:pretrained_bpe
              the same three on 8,192 BPE subwords with a causal encoder. Each reads the first 128
              tokens of each speech; pretrained_bpe and frozen_bpe start from
              `transformer_mlm:causal_bpe` in pretrain_bpe beside the workdir (runs/pretrain_bpe
              here). No rows of their own; their summaries quote the character-level scratch row,
              speech_classifier_char.
  tuned_bpe   python -m experiments.transformer_classifier --workdir=runs/classifier_tuned_bpe --config=experiments/transformer_classifier/config.py:tuned_bpe
              the best honest recipe: pretrained_bpe (from pretrain_bpe beside the workdir) with
              more dropout, weight decay and label smoothing, 10 epochs, an eval every half epoch on
              test and validation; the step is chosen by validation play accuracy and its test
              numbers are `selected_test_*` in results.json. Row: speech_classifier.
  binary      python -m experiments.transformer_classifier --workdir=runs/classifier_binary --config=experiments/transformer_classifier/config.py:binary
              the article's binary listing as written: Dense(512, relu) -> Dropout(0.1) -> Dense(1,
              sigmoid), binary cross-entropy, Adam 3e-5 constant, 3 epochs, on comedy vs tragedy
              (the comedies' and tragedies' speeches; histories left out). Accuracy, F1, ROC AUC.
              No row; no reference in its summary.
  binary_tuned python -m experiments.transformer_classifier --workdir=runs/classifier_binary_tuned --config=experiments/transformer_classifier/config.py:binary_tuned
              the same head and loss with Adam 3e-4, warmup + cosine. No row; no reference in its summary.
  tiny        python -m experiments.transformer_classifier --workdir=DIR --config=experiments/transformer_classifier/config.py:tiny
              seconds-long, for tests; no row, no reference in its summary.

Any variant takes `--config.tokenizer.name=bpe` (subwords; with init_from, the pretraining run's
tokenizer, which must be bpe of the same size), `--config.model.pooling=mean|max|attention|last`
and `--config.num_epochs=N`. BUILD_NOTES.md has the experiments with them.
"""

import ml_collections

from experiments.transformer_mlm.config import encoder_config, tiny_encoder_config, tokenizer_config
from experiments import REFERENCE_TABLE
from lab import configs, reference_table


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The speech classifier from scratch (play and genre), or the named variant of it."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = "shakespeare_plays"
    c.task = "play_genre"  # or "comedy_tragedy": comedies' and tragedies' speeches, one sigmoid output
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.batch_size = 32
    c.eval_batch_size = 256
    c.num_epochs = 3  # the train loop counts steps: num_train_steps = epochs * (train speeches // batch)
    c.num_train_steps = ml_collections.FieldReference(None, field_type=int)  # None: from num_epochs
    c.log_every_steps = 100
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.max_checkpoints_to_keep = 2
    configs.add_loop_options(c)  # parallel, mesh, steps_per_call, ... (README: the loop's training keys)
    c.model = encoder_config()  # must equal the pretraining run's encoder
    c.model.head_hidden = 512
    c.model.head_dropout = 0.1
    c.model.pooling = "mean"  # of the encoder's outputs over real tokens: mean, max, attention (a learned query), last
    c.label_smoothing = 0.0  # > 0: train against labels smoothed towards uniform (evaluation: plain cross-entropy)
    c.tokenizer = tokenizer_config()  # must equal the pretraining run's (its tokenizer.json is taken from there)
    c.init_from = ""  # workdir of a transformer_mlm run: its params['encoder'] initialise ours (first start only)
    c.init_from_params = ("encoder",)  # the top-level params taken from it

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 3e-4
    c.optimizer.schedule = "warmup_cosine"
    c.optimizer.warmup_steps = ml_collections.FieldReference(None, field_type=int)  # None: 10% of the steps
    c.optimizer.end_learning_rate = 0.0
    c.optimizer.decay_steps = ml_collections.FieldReference(None, field_type=int)  # cosine horizon; None: num_train_steps
    c.optimizer.grad_clip_norm = 1.0
    c.optimizer.frozen = ()  # ('encoder',) trains only the head

    # Shown beside the result in the closing summary; no effect on the run.
    c.reference = reference_table.table_reference(REFERENCE_TABLE, "speech_classifier_char", "test_play_accuracy")

    if variant in (None, "", "scratch"):
        return c
    if variant in ("pretrained", "frozen"):
        c.init_from = "transformer_mlm"  # a run beside the workdir
        if variant == "frozen":
            c.optimizer.frozen = ("encoder",)
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "speech_classifier_char", "test_play_accuracy",
                                             label="the encoder from scratch")
        return c
    if variant in ("scratch_bpe", "pretrained_bpe", "frozen_bpe"):
        # Subwords (8,192 BPE tokens, as `transformer_mlm:causal_bpe` pretrains them: a better
        # play classifier than 1,024) on that run's causal encoder, its outputs averaged (mean
        # pooling: better than the last token's, as good as attention pooling; BUILD_NOTES.md).
        c.tokenizer.name = "bpe"
        c.tokenizer.vocab_size = 8192
        c.model.causal = True
        if variant != "scratch_bpe":
            c.init_from = "pretrain_bpe"  # a run beside the workdir
        if variant == "frozen_bpe":
            c.optimizer.frozen = ("encoder",)
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "speech_classifier_char", "test_play_accuracy",
                                             label="the character-level encoder from scratch")
        return c
    if variant in ("binary", "binary_tuned"):
        # The article's listing: encoder -> Dense(512, relu) -> Dropout(0.1) -> Dense(1, sigmoid),
        # binary cross-entropy, Adam 3e-5, 3 epochs; on comedy vs tragedy (histories left out).
        # binary_tuned: the same head and loss with this file's Adam 3e-4, warmup + cosine.
        c.task = "comedy_tragedy"
        if variant == "binary":
            c.optimizer.learning_rate = 3e-5
            c.optimizer.schedule = "constant"
        del c.reference  # no row
        return c
    if variant == "tuned_bpe":
        # The best honest recipe so far: pretrained_bpe regularised (more dropout, decoupled
        # weight decay, label smoothing) for longer, its step chosen on the validation speeches:
        # every half epoch an eval, and the results at the best validation play accuracy
        # (`selected_test_*`) beside the last step's. Test never chooses anything.
        c.tokenizer.name = "bpe"
        c.tokenizer.vocab_size = 8192
        c.model.causal = True
        c.init_from = "pretrain_bpe"  # a run beside the workdir
        c.num_epochs = 10
        c.eval_every_steps = c.checkpoint_every_steps = 336  # half an epoch of 21,516 speeches
        c.keep_best, c.keep_best_mode = "validation_play_accuracy", "max"
        c.model.dropout_rate = 0.2
        c.model.head_dropout = 0.3
        c.label_smoothing = 0.1
        c.optimizer.name = "adamw"
        c.optimizer.weight_decay = 0.05  # on matrices only
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "speech_classifier", "selected_test_play_accuracy")
        return c
    if variant == "tiny":
        c.batch_size = 8
        c.eval_batch_size = 64
        c.eval_batches = 4  # 256 test and validation speeches
        c.num_train_steps = 4
        c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = 2
        c.model.update(tiny_encoder_config())
        c.model.head_hidden = 16
        del c.reference  # no row: a test run
        return c
    raise ValueError(f"unknown variant {variant!r}: use scratch, pretrained, frozen, scratch_bpe, pretrained_bpe, "
                     "frozen_bpe, tuned_bpe, binary, binary_tuned or tiny")
