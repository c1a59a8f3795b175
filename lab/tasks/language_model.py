"""Language modelling: next-token prediction (GPT) and masked-token prediction (BERT-style MLM).

Both are token-level cross-entropy with weights: `count` counts the tokens that carry a loss,
so the loop's gradient is that of the mean over exactly those tokens, on any number of devices.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lab import progress, report
from lab.tasks import metrics
from lab.errors import ConfigValueError
from lab.models import decoding, encoder, transformer
from lab.task import Task


COMPUTE_DTYPES = ("float32", "bfloat16")


def check_compute_dtype(model_cfg) -> None:
    """`model.compute_dtype`, where the block has one: float32 or bfloat16."""
    dtype = model_cfg.get("compute_dtype", "float32")
    if dtype not in COMPUTE_DTYPES:
        raise ConfigValueError(f"config.model.compute_dtype={dtype!r}: use one of {', '.join(COMPUTE_DTYPES)}")


def gpt_config(model_cfg, vocab_size: int) -> transformer.TransformerConfig:
    """The GPT's TransformerConfig from an experiment's `model` block (`transformer_lm`).

    A workdir written before `model.use_bias` existed holds a model with biases: absent means True.
    `model.compute_dtype` (absent: float32) is the matmuls' dtype; parameters, optimizer state,
    softmax and the loss stay float32. `model.remat` (absent: False): recompute each block's
    activations in the backward pass (`TransformerConfig.remat`; the same numbers and params).
    """
    m = model_cfg
    return transformer.TransformerConfig(
        vocab_size=vocab_size, num_layers=m.num_layers, num_heads=m.num_heads, width=m.width,
        max_len=m.block_size, dropout_rate=m.dropout_rate, use_bias=m.get("use_bias", True),
        dtype=jnp.dtype(m.get("compute_dtype", "float32")), remat=bool(m.get("remat", False)))


TOKENIZERS = ("char", "bpe")


def tokenizer_name(config) -> str:
    """'char' or 'bpe': the config's `tokenizer.name` ('char' for runs older than the block)."""
    return (config.get("tokenizer") or {"name": "char"})["name"]


def check_tokenizer(config) -> None:
    """A text experiment's `tokenizer` block: a known name, a BPE size in range."""
    from lab.data.subword import MIN_VOCAB

    if config.tokenizer.name not in TOKENIZERS:
        raise ConfigValueError(f"config.tokenizer.name={config.tokenizer.name!r}: use one of {', '.join(TOKENIZERS)}")
    if config.tokenizer.name == "bpe" and not MIN_VOCAB <= config.tokenizer.vocab_size <= 65536:
        raise ConfigValueError(f"config.tokenizer.vocab_size={config.tokenizer.vocab_size}: a byte-level BPE "
                               f"takes {MIN_VOCAB}..65536 tokens (256 bytes, then merges)")


def run_tokenizer(config, workdir: str | None, train_text: Callable[[], str] | None = None,
                  source_workdir: str | None = None):
    """The tokenizer of a text run: `config.tokenizer.name` 'char' (the dataset's characters) or
    'bpe' (`lab.data.subword`, `config.tokenizer.vocab_size` tokens), kept in
    `workdir/tokenizer.json` so that the run is reproducible from its workdir.

    A 'bpe' run reads the workdir's tokenizer; where there is none yet (a first start) it takes
    the one of `source_workdir` (a pretraining run whose encoder it starts from: the ids must mean
    the same tokens) or else trains one on `train_text()` (the training split only: the validation
    and test text never shape the vocabulary), and saves it there. A config without a `tokenizer`
    block (older runs) is 'char'.

    Raises:
      DataError: a 'bpe' run without a tokenizer and no `train_text`, or an unreadable one.
      ConfigValueError: the workdir's tokenizer has another vocabulary size than the config.
    """
    import lab.data
    from lab.data import subword

    if tokenizer_name(config) == "char":
        return lab.data.char_tokenizer(config.get("data_dir"))
    block = config.tokenizer

    def checked(tokenizer, where):
        if tokenizer.vocab_size != block["vocab_size"]:
            raise ConfigValueError(f"{where} has {tokenizer.vocab_size} tokens, the config asks for "
                                   f"{block['vocab_size']}: set --config.tokenizer.vocab_size={tokenizer.vocab_size} "
                                   f"or use a new --workdir")
        return tokenizer

    path = os.path.join(workdir, subword.FILENAME) if workdir else None
    if path and os.path.isfile(path):
        return checked(subword.SubwordTokenizer.load(path), path)
    if source_workdir:
        source = os.path.join(source_workdir, subword.FILENAME)
        tokenizer = checked(subword.SubwordTokenizer.load(source), source)
    elif train_text is not None:
        text = train_text()
        with progress.phase(f"training a byte-level BPE tokenizer of {block['vocab_size']:,} tokens on the train "
                            f"text ({len(text):,} characters)", "trained the BPE tokenizer") as p:
            tokenizer = subword.SubwordTokenizer.train(text, block["vocab_size"])
            if path:
                p.note = f"kept in {path}: later starts read it"
    else:  # nothing to take it from: say where it should have been
        return subword.SubwordTokenizer.load(path or "")
    if path and jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tokenizer.save(path)
    return tokenizer


def encoder_config(model_cfg, num_chars: int) -> transformer.TransformerConfig:
    """The encoder's TransformerConfig from a `model` block: tokens (characters or subwords)
    0..N-1, PAD = N, MASK = N + 1 (shared by `transformer_mlm` and the classifier that starts
    from it); `causal` and `remat` (default False) as the block says."""
    return transformer.TransformerConfig(
        vocab_size=encoder.encoder_token_ids(num_chars).vocab_size,
        num_layers=model_cfg.num_layers, num_heads=model_cfg.num_heads, width=model_cfg.width,
        max_len=model_cfg.max_len, dropout_rate=model_cfg.dropout_rate, causal=model_cfg.get("causal", False),
        remat=bool(model_cfg.get("remat", False)))


def sample_text(gpt_cfg: transformer.TransformerConfig, params, tokenizer, prompt: str,
                num_tokens: int, rng: jax.Array, temperature: float, top_k: int | None) -> str:
    """`prompt` followed by `num_tokens` sampled characters (a sliding window past max_len)."""
    ids = tokenizer.encode(prompt).astype(np.int32)[None]
    out = decoding.generate_long(gpt_cfg, params, ids, num_tokens, rng,
                                 temperature=temperature, top_k=top_k or None)
    return tokenizer.decode(np.asarray(out[0]))


def token_sums(logits_BxLxV, targets_BxL, weights_BxL) -> dict:
    """Token-level CE sums: the classification sums over the B*L positions."""
    vocab = logits_BxLxV.shape[-1]
    return metrics.classification_sums(logits_BxLxV.reshape(-1, vocab), targets_BxL.reshape(-1),
                                       weights_BxL.reshape(-1))


def lm_summary(sums: dict) -> dict:
    """loss (nats per token), perplexity and next-token accuracy."""
    out = metrics.classification_summary(sums)
    out["perplexity"] = float(np.exp(min(out["loss"], 50.0)))
    return out


class CausalLMTask(Task):
    """`lab.task.Task` for a GPT on batches {'inputs', 'targets'} int32 (B, L).

    Eval batches may carry `mask` (B,) from padded batching: padded rows carry no loss.

    Args:
      config: the GPT's TransformerConfig.
      sample: optional `(params, step, rng) -> str` writer of text samples at each eval; the
        text goes to `workdir/samples/step_<N>.txt` and TensorBoard's text 'samples'.
      chars_per_token: characters of text per token (1 for characters; for subwords, the
        validation split's ratio), so that the summary's `bits_per_char` compares tokenizers.
    """

    count_unit = "tokens"

    def __init__(self, config: transformer.TransformerConfig,
                 sample: Callable[[Any, int, jax.Array], str] | None = None, chars_per_token: float = 1.0):
        self.config = config
        self.model = transformer.GPT(config)
        self._sample = sample
        self.chars_per_token = float(chars_per_token)

    def init(self, rng: jax.Array) -> dict:
        tokens = jnp.zeros((1, self.config.max_len), jnp.int32)
        return {"params": self.model.init({"params": rng}, tokens, train=False)["params"]}

    def loss(self, params, batch: dict, rng: jax.Array):
        """(sum of next-token CE over all B*L positions, sums incl. `count` tokens)."""
        logits = self.model.apply({"params": params}, batch["inputs"], train=True, rngs={"dropout": rng})
        sums = token_sums(logits, batch["targets"], jnp.ones(batch["targets"].shape, jnp.float32))
        return sums.pop("loss"), sums

    def evaluate(self, variables, batch: dict, rng: jax.Array) -> dict:
        logits = self.model.apply(variables, batch["inputs"], train=False)
        weights = jnp.ones(batch["targets"].shape, jnp.float32)
        if "mask" in batch:
            weights = weights * batch["mask"][:, None]
        return token_sums(logits, batch["targets"], weights)

    def summarize(self, sums: dict) -> dict:
        """`lm_summary`, plus bits_per_char: the loss in bits spread over the tokens' characters."""
        out = lm_summary(sums)
        out["bits_per_char"] = out["loss"] / np.log(2.0) / self.chars_per_token
        return out

    def on_eval(self, variables, step: int, workdir: str, rng: jax.Array) -> None:
        """Writes a text sample from the current params (every process samples, process 0 writes)."""
        if self._sample is None:
            return
        text = self._sample(variables["params"], step, rng)
        report.save_text(os.path.join(workdir, "samples", f"step_{step}.txt"), text, tag="samples")


class EncoderLMTask(Task):
    """`lab.task.Task` pretraining an encoder (an `encoder.MaskedLM`) on batches of token
    `inputs` (B, L): BERT's masked LM on a bidirectional encoder, next-token prediction on a
    causal one (`config.causal`; L - 1 targets per row).

    Masking (15%, 80/10/10) happens on device from the step's rng in training, and from the
    loop's fixed eval rng (derived from the run's seed) in eval, so eval numbers are comparable
    across steps and, drawn over the global batch, do not depend on the device count.
    An optional `token_mask` (B, L) marks real tokens (1) against padding (0); without it every
    token is real (windows of a text stream). Eval batches may carry `mask` (B,) (padded rows).
    """

    count_unit = "tokens"

    def __init__(self, config: transformer.TransformerConfig, token_ids: encoder.TokenIds,
                 mask_rate: float = 0.15):
        self.config = config
        self.ids = token_ids
        self.model = encoder.MaskedLM(config)
        self.mask_rate = mask_rate

    def init(self, rng: jax.Array) -> dict:
        tokens = jnp.zeros((1, self.config.max_len), jnp.int32)
        return {"params": self.model.init({"params": rng}, tokens, jnp.ones_like(tokens), train=False)["params"]}

    def _sums(self, params, batch, rng, *, train: bool) -> dict:
        mask_rng, dropout_rng = jax.random.split(rng)
        token_mask = batch.get("token_mask", jnp.ones(batch["inputs"].shape, jnp.int32))
        if self.config.causal:  # position i predicts token i + 1, where both are real
            inputs, targets = batch["inputs"], batch["inputs"][:, 1:]
            weights = (token_mask[:, :-1] * token_mask[:, 1:]).astype(jnp.float32)
        else:
            inputs, targets, weights = encoder.mask_tokens(
                mask_rng, batch["inputs"], token_mask, mask_id=self.ids.mask_id,
                vocab_size=self.ids.num_chars, rate=self.mask_rate)
        logits = self.model.apply({"params": params}, inputs, token_mask, train=train,
                                  rngs={"dropout": dropout_rng} if train else None)
        if self.config.causal:
            logits = logits[:, :-1]
        if "mask" in batch:  # padded eval rows
            weights = weights * batch["mask"][:, None]
        return token_sums(logits, targets, weights)

    def loss(self, params, batch: dict, rng: jax.Array):
        sums = self._sums(params, batch, rng, train=True)
        return sums.pop("loss"), sums

    def evaluate(self, variables, batch: dict, rng: jax.Array) -> dict:
        return self._sums(variables["params"], batch, rng, train=False)

    def summarize(self, sums: dict) -> dict:
        return lm_summary(sums)
