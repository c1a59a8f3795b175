"""Print text from the latest checkpoint of a transformer_lm run.

    python -m experiments.transformer_lm.sample --workdir=DIR --prompt="ROMEO:" [--num_tokens=500]
        [--temperature=0.8] [--top_k=20] [--seed=0]
"""

import math
import sys

import jax
from absl import app, flags, logging
import ml_collections

from lab import checkpoint
from lab.errors import LabError
from lab.provenance import read_run_config
from lab.tasks.language_model import gpt_config, run_tokenizer, sample_text

flags.DEFINE_string("workdir", None, "The run's --workdir.")
flags.DEFINE_string("prompt", "ROMEO:\n", "Text to continue.")
flags.DEFINE_integer("num_tokens", 500, "Tokens to sample (characters, or subwords for a bpe run).")
MAX_TOKENS = 100_000  # a stated bound on one sample's length (the decode runs a window at a time)

flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.")
flags.DEFINE_integer("top_k", 20, "Sample among the k likeliest characters; 0 = all.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only restores: noise before the text
    try:
        try:
            FLAGS.prompt.encode("utf-8")
        except UnicodeEncodeError:  # bytes the shell passed that are not UTF-8 (surrogate escapes)
            raise LabError("--prompt is not UTF-8 text: pass the prompt in UTF-8") from None
        if not 1 <= FLAGS.num_tokens <= MAX_TOKENS or not (math.isfinite(FLAGS.temperature) and FLAGS.temperature >= 0) \
                or FLAGS.top_k < 0:
            raise LabError(f"--num_tokens must be in 1..{MAX_TOKENS:,}, --temperature a finite number >= 0, --top_k >= 0")
        config = ml_collections.ConfigDict(read_run_config(
            FLAGS.workdir, "transformer_lm", needs=("model.num_layers", "model.block_size", "dataset")))
        tokenizer = run_tokenizer(config, FLAGS.workdir)  # characters, or the run's subwords
        gpt_cfg = gpt_config(config.model, tokenizer.vocab_size)
        params, where = checkpoint.load_params(FLAGS.workdir)
        text = sample_text(gpt_cfg, params, tokenizer, FLAGS.prompt, FLAGS.num_tokens,
                           jax.random.key(FLAGS.seed), FLAGS.temperature, FLAGS.top_k)
    except LabError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
    print(text)


if __name__ == "__main__":
    from experiments.cli import parse_flags  # the one way every command answers a bad flag

    app.run(main, flags_parser=parse_flags)
