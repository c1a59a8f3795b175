"""Configs of the GPT character LM. Select a variant with `--config=experiments/transformer_lm/config.py:NAME`.

What they are for: nanoGPT's shakespeare_char recipe in lab, scored by the validation loss
(nats per character) with a sample at each eval. The measured numbers live in
experiments/reference_results.json (README's results table is generated from it; BUILD_NOTES.md
has the curves); each variant names its row, and the closing summary quotes that row.

  (default)  python -m experiments.transformer_lm --workdir=runs/lm_default
             nanoGPT's CPU recipe for shakespeare_char, one to one: 4 layers, 4 heads, width 128,
             block 64, batch 12, no biases, AdamW lr 1e-3 (beta2 0.99, weight decay 0.1, clip 1.0),
             100 warmup steps then cosine to 1e-4 over 2,000 steps, dropout 0. Row: lm_default
             (it also holds nanoGPT's own number for its recipe).
             `--config.model.compute_dtype=bfloat16` runs the matmuls in bf16 (faster only on a
             CPU with bf16 instructions, AVX512_BF16 or AMX); no row.
  tuned      python -m experiments.transformer_lm --workdir=runs/lm_tuned --config=experiments/transformer_lm/config.py:tuned
             the same model, lr 2e-3, 200 warmup steps, 7,000 steps, two evals: the recipe
             pushed for a short CPU budget. Row: lm_tuned.
  tuned_bpe  python -m experiments.transformer_lm --workdir=runs/lm_tuned_bpe --config=experiments/transformer_lm/config.py:tuned_bpe
             the tuned recipe on byte-level BPE subwords (1,024 tokens, trained on the train split and
             kept in the workdir); compare val_bits_per_char (the char runs' loss / ln 2). No row
             of its own; its summary quotes lm_tuned's val loss in bits per character.
  wide       python -m experiments.transformer_lm --workdir=runs/lm_wide --config=experiments/transformer_lm/config.py:wide
             nanoGPT's GPU model shape (6 layers, 6 heads, width 384, block 256, batch 8), for the
             benchmark (benchmarks/transformer_lm.py); no row, no reference in its summary.
  nanogpt_gpu python -m experiments.transformer_lm --workdir=runs/lm_nanogpt_gpu --config=experiments/transformer_lm/config.py:nanogpt_gpu
             nanoGPT's GPU recipe (the `wide` shape at batch 64, dropout 0.2, 5,000 steps), its
             best eval's val loss as `selected_val_loss`. Row: lm_nanogpt_gpu (a GPU's run: on a
             2-core CPU a step takes seconds; BUILD_NOTES.md has the figure).
  tiny       python -m experiments.transformer_lm --workdir=DIR --config=experiments/transformer_lm/config.py:tiny
             a seconds-long run for tests; no row, no reference in its summary.
"""

import math
import ml_collections

from experiments.transformer_mlm.config import tokenizer_config
from experiments import REFERENCE_TABLE
from lab import configs, reference_table


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """nanoGPT's shakespeare_char CPU recipe, or the named variant of it."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # init, data windows, dropout and samples all derive from it
    c.dataset = "shakespeare_char"
    c.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: $LAB_DATA_DIR or ~/tensorflow_datasets
    c.batch_size = 12  # sequences per step (global, split over devices)
    c.eval_batch_size = 12
    c.num_train_steps = 2000
    c.log_every_steps = 100
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 500
    c.max_checkpoints_to_keep = 2
    configs.add_loop_options(c)  # parallel, mesh, steps_per_call, ... (README: the loop's training keys)
    c.eval_batches = 20  # nanoGPT's eval_iters: fixed windows of each split, the same at every eval

    c.model = ml_collections.ConfigDict()
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.width = 128
    c.model.block_size = 64  # context length (max_len)
    c.model.dropout_rate = 0.0
    c.model.use_bias = False  # nanoGPT's `bias=False`: no biases in Dense layers or LayerNorms
    c.model.compute_dtype = "float32"  # or "bfloat16": matmuls in bf16; params, softmax, loss in f32
    c.model.remat = False  # True: recompute each block's activations in the backward pass (less memory, same numbers)

    # 'char': the 65 characters (nanoGPT's recipe); 'bpe': byte-level BPE subwords of vocab_size
    # tokens, trained on the train split at the first start, kept in workdir/tokenizer.json.
    c.tokenizer = tokenizer_config()

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.99
    c.optimizer.weight_decay = 0.1  # on matrices only
    c.optimizer.grad_clip_norm = 1.0
    c.optimizer.schedule = "warmup_cosine"
    c.optimizer.warmup_steps = 100
    c.optimizer.end_learning_rate = 1e-4
    c.optimizer.decay_steps = ml_collections.FieldReference(None, field_type=int)  # cosine horizon; None: num_train_steps

    c.sample = ml_collections.ConfigDict()
    c.sample.prompt = "ROMEO:\n"  # written to workdir/samples/ at every eval
    c.sample.num_tokens = 200
    c.sample.temperature = 0.8
    c.sample.top_k = 20

    # Shown beside the result in the closing summary; no effect on the run.
    c.reference = reference_table.table_reference(REFERENCE_TABLE, "lm_default", "val_loss")

    if variant in (None, ""):
        return c
    if variant == "tuned":
        # The default recipe, pushed for a short CPU budget: twice the peak learning rate,
        # 3.5x the steps, evals only twice (each eval also writes a sample: time off training).
        c.num_train_steps = 7000
        c.eval_every_steps = 3500
        c.checkpoint_every_steps = 3500
        c.optimizer.learning_rate = 2e-3
        c.optimizer.warmup_steps = 200
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "lm_tuned", "val_loss")
        return c
    if variant == "tuned_bpe":
        # The tuned recipe on byte-level BPE subwords (lab.data.subword, 1,024 tokens trained on
        # the train split): the same model and steps; each 64-token window spans more text than
        # 64 characters. Compare val_bits_per_char with the char runs'.
        c = get_config("tuned")
        c.tokenizer.name = "bpe"
        nats = reference_table.table_reference(REFERENCE_TABLE, "lm_tuned", "val_loss", label="the tuned char run's val loss / ln 2")
        c.reference = dict(nats, metric="val_bits_per_char",
                           value=None if nats["value"] is None else round(nats["value"] / math.log(2), 4))
        return c
    if variant == "wide":
        c.batch_size = 8
        c.eval_batch_size = 8
        c.model.num_layers = 6
        c.model.num_heads = 6
        c.model.width = 384
        c.model.block_size = 256
        del c.reference  # no row: a benchmark shape
        return c
    if variant == "nanogpt_gpu":
        # nanoGPT's GPU recipe for shakespeare_char (its config/train_shakespeare_char.py): 6
        # layers, 6 heads, width 384, block 256, batch 64, dropout 0.2, 5,000 steps, an eval of
        # 200 batches every 250 steps. nanoGPT reports the best eval's val loss: here
        # `selected_val_loss` (keep_best), beside the last step's `val_loss`.
        c.batch_size = c.eval_batch_size = 64
        c.eval_batches = 200
        c.num_train_steps = 5000
        c.eval_every_steps = 250
        c.checkpoint_every_steps = 500
        c.keep_best, c.keep_best_mode = "val_loss", "min"
        c.model.num_layers = c.model.num_heads = 6
        c.model.width = 384
        c.model.block_size = 256
        c.model.dropout_rate = 0.2
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "lm_nanogpt_gpu", "selected_val_loss")
        return c
    if variant == "tiny":
        c.batch_size = 4
        c.eval_batch_size = 4
        c.eval_batches = 2
        c.num_train_steps = 6
        c.log_every_steps = 3
        c.eval_every_steps = 3
        c.checkpoint_every_steps = 3
        c.model.num_layers = 1
        c.model.num_heads = 2
        c.model.width = 32
        c.model.block_size = 16
        c.sample.num_tokens = 8
        del c.reference  # no row: a test run
        return c
    raise ValueError(f"unknown variant {variant!r}: use tuned, tuned_bpe, wide, nanogpt_gpu or tiny")
