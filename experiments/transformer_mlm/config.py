"""Configs of the masked-LM pretraining run whose encoder the transformer classifier loads. Select a variant with `--config=experiments/transformer_mlm/config.py:NAME`.

What they are for: pretraining the encoder of `experiments.transformer_classifier` (its
`pretrained` and `frozen` variants start from this run's workdir). It pretrains on the LM corpus,
shakespeare_char (the original recipe). Its train 90% holds most of the classifier's test
speeches as unlabelled text, and the speaker names; for a pretraining that never sees a
validation or test speech, `--config.dataset=shakespeare_plays` uses the classifier's train
speeches only (speaker names left out, speeches joined by blank lines).
The encoder shape here must equal the classifier's (`experiments/transformer_classifier/config.py`):
loading checks names, shapes and dtypes and refuses a mismatch; the classifier also refuses
another `num_heads`, `max_len` or `causal`.

No variant of this file has a row in experiments/reference_results.json (the table holds the
measured numbers; BUILD_NOTES.md has the pretraining experiments), so the closing summary quotes
no reference.

  (default)   python -m experiments.transformer_mlm --workdir=runs/transformer_mlm
              BERT-style masked-LM pretraining of the classifier's encoder on shakespeare_char:
              15% of the characters masked, 6,000 steps of 32 x 128 characters. No row.
  causal_bpe  python -m experiments.transformer_mlm --workdir=runs/pretrain_bpe --config=experiments/transformer_mlm/config.py:causal_bpe
              the subword classifier's pretraining (BUILD_NOTES.md, "Pretraining that pays"):
              next-token prediction by a causal encoder on the classifier's train speeches in
              8,192 BPE tokens, 3,000 steps of 32 x 128 tokens. No row.
  tiny        python -m experiments.transformer_mlm --workdir=DIR --config=experiments/transformer_mlm/config.py:tiny
              a seconds-long run for tests; no row.
"""

import ml_collections

from lab import configs


def encoder_config() -> ml_collections.ConfigDict:
    """The encoder both experiments share: 2 layers, 4 heads, width 128, 128 characters.

    Sized for a small CPU budget: 128 characters cover 70% of the speeches whole (the median
    speech has 65, the 90th percentile 324); the rest of a longer speech is cut.
    """
    m = ml_collections.ConfigDict()
    m.num_layers = 2
    m.num_heads = 4
    m.width = 128
    m.max_len = 128  # characters per sequence
    m.dropout_rate = 0.1
    m.causal = False  # True: each token sees only the ones before it (pretrained by next-token prediction)
    m.remat = False  # True: recompute each block's activations in the backward pass (less memory, same numbers)
    return m


def tokenizer_config() -> ml_collections.ConfigDict:
    """'char' (the corpus's characters) or 'bpe' (byte-level BPE of vocab_size tokens, trained on
    the pretraining text's train split, kept in the workdir); the classifier's must equal the
    pretraining run's it starts from."""
    return ml_collections.ConfigDict(dict(name="char", vocab_size=1024))


def tiny_encoder_config() -> ml_collections.ConfigDict:
    """The tests' encoder, shared by both experiments' `tiny` variants: 1 layer, width 32."""
    m = encoder_config()
    m.update(num_layers=1, num_heads=2, width=32, max_len=32)
    return m


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The masked-LM pretraining on shakespeare_char, or the named variant of it."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = "shakespeare_char"  # the LM corpus; or "shakespeare_plays" (its train speeches only)
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.batch_size = 32  # windows of max_len characters
    c.eval_batch_size = 32
    c.mask_rate = 0.15  # BERT: 15% of tokens, 80% [MASK] / 10% random / 10% kept
    c.num_train_steps = 6000  # 24.6 M characters: 6 passes over shakespeare_char's 4.1 M train
    c.log_every_steps = 100
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.max_checkpoints_to_keep = 2
    configs.add_loop_options(c)  # parallel, mesh, steps_per_call, ... (README: the loop's training keys)
    c.eval_batches = 10  # windows of the validation split, the same at every eval
    c.model = encoder_config()
    c.tokenizer = tokenizer_config()

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.b2 = 0.99
    c.optimizer.weight_decay = 0.01
    c.optimizer.grad_clip_norm = 1.0
    c.optimizer.schedule = "warmup_cosine"
    c.optimizer.warmup_steps = 300
    c.optimizer.end_learning_rate = 1e-5
    c.optimizer.decay_steps = ml_collections.FieldReference(None, field_type=int)  # cosine horizon; None: num_train_steps

    if variant in (None, ""):
        return c
    if variant == "causal_bpe":
        # The run the subword classifier starts from: next-token prediction on the classifier's
        # train speeches only, in 8,192 byte-level BPE tokens (a larger vocabulary fine-tunes to a
        # better classifier than 1,024), by a causal encoder (the masked LM on subwords did not
        # get past the unigram loss; see BUILD_NOTES.md).
        c.dataset = "shakespeare_plays"
        c.tokenizer.name = "bpe"
        c.tokenizer.vocab_size = 8192
        c.model.causal = True
        c.num_train_steps = 3000
        c.eval_every_steps = c.checkpoint_every_steps = 1000
        return c
    if variant == "tiny":
        c.batch_size = c.eval_batch_size = 4
        c.eval_batches = 2
        c.num_train_steps = 4
        c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = 2
        c.model = tiny_encoder_config()
        return c
    raise ValueError(f"unknown variant {variant!r}: use causal_bpe or tiny")
