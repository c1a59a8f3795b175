"""Configs of the LSTM encoder-decoder chatbot. Select a variant with `--config=experiments/lstm_chatbot/config.py:NAME`.

What they are for: a character-level reply model trained on `shakespeare_dialogue` pairs (a
speech, the next speech of another speaker in the same scene), split by scene, scored by the
validation per-character cross-entropy and perplexity after 2,000 steps, with sample replies at
each eval. The measured numbers live in experiments/reference_results.json (README's results
table is generated from it); each variant names its row, and the closing summary quotes it.

  (default)     python -m experiments.lstm_chatbot --workdir=runs/chatbot
                The article's recipe: Embedding -> LSTM encoder -> LSTM decoder (initialised with
                the encoder's final state) -> Linear(vocab), Adam lr 1e-3, cross-entropy, teacher
                forcing; no attention. Row: chatbot.
  additive      python -m experiments.lstm_chatbot --workdir=runs/chatbot_additive --config=experiments/lstm_chatbot/config.py:additive
                additive (Bahdanau-score) attention: what attention adds. No row of its own; its
                summary quotes the no-attention row, chatbot.
  dot           python -m experiments.lstm_chatbot --workdir=runs/chatbot_dot --config=experiments/lstm_chatbot/config.py:dot
                dot-product (Luong 'general') attention. No row of its own; its summary quotes
                the no-attention row, chatbot.
  decoder_only  python -m experiments.lstm_chatbot --workdir=runs/chatbot_decoder_only --config=experiments/lstm_chatbot/config.py:decoder_only
                the same decoder as a language model of replies that never sees the prompt: what
                the encoder is worth. No row of its own; its summary quotes the encoder-decoder
                row, chatbot.
  tiny          python -m experiments.lstm_chatbot --workdir=DIR --config=experiments/lstm_chatbot/config.py:tiny
                a seconds-long run for tests; no row, no reference in its summary.
Then: python -m experiments.lstm_chatbot.chat --workdir=runs/chatbot  (reads lines from stdin)
"""

import ml_collections

from experiments import REFERENCE_TABLE
from lab import configs, reference_table


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The article's chatbot recipe, or the named variant of it."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # init, data order, samples: every random number of the run derives from it
    c.dataset = "shakespeare_dialogue"
    c.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: $LAB_DATA_DIR or ~/tensorflow_datasets
    c.max_src = 96  # prompt characters kept (the last 95, nearest the reply) + EOS
    c.max_tgt = 96  # reply characters kept (the first 96, EOS included when it fits)
    c.batch_size = 64
    c.eval_batch_size = 256
    c.num_train_steps = 2000  # ~5 epochs of the 24,328 train pairs
    c.log_every_steps = 100
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 1000
    c.max_checkpoints_to_keep = 2
    configs.add_loop_options(c)  # parallel, mesh, steps_per_call, ... (README: the loop's training keys)

    c.model = ml_collections.ConfigDict()
    c.model.embed_dim = 64
    c.model.hidden = 256  # encoder and decoder alike: the encoder's final state starts the decoder
    c.model.num_layers = 1
    c.model.activation = "tanh"
    c.model.attention = "none"  # none | additive | dot
    c.model.attention_dim = 64  # additive attention's hidden size
    c.model.use_encoder = True  # False: a decoder-only LM of the replies (never sees the prompt)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "constant"
    c.optimizer.warmup_steps = 0
    c.optimizer.end_learning_rate = 0.0
    c.optimizer.decay_steps = ml_collections.FieldReference(None, field_type=int)  # cosine horizon; None: num_train_steps
    c.optimizer.grad_clip_norm = 1.0  # LSTMs: guards against the odd exploding step

    c.sample = ml_collections.ConfigDict()
    c.sample.num_prompts = 4  # the first validation prompts, answered at every eval (samples/)
    c.sample.max_new_tokens = 96
    c.sample.temperature = 0.8
    c.sample.top_k = 0  # 0: all characters

    # Shown beside the result in the closing summary; no effect on the run.
    c.reference = reference_table.table_reference(REFERENCE_TABLE, "chatbot", "val_perplexity")

    if variant in (None, ""):
        return c
    if variant in ("additive", "dot"):
        c.model.attention = variant
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "chatbot", "val_perplexity", label="the no-attention recipe")
        return c
    if variant == "decoder_only":
        c.model.use_encoder = False
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "chatbot", "val_perplexity", label="the encoder-decoder recipe")
        return c
    if variant == "tiny":
        c.max_src = 16
        c.max_tgt = 12
        c.batch_size = 8
        c.eval_batch_size = 512
        c.num_train_steps = 4
        c.log_every_steps = 2
        c.eval_every_steps = 4
        c.checkpoint_every_steps = 2
        c.model.embed_dim = 8
        c.model.hidden = 16
        c.model.attention = "additive"
        c.model.attention_dim = 8
        c.sample.num_prompts = 2
        c.sample.max_new_tokens = 8
        del c.reference  # no row: a test run
        return c
    raise ValueError(f"unknown variant {variant!r}: use additive, dot, decoder_only or tiny")
