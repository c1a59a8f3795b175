"""Answer lines from stdin with a trained lstm_chatbot run, one reply per line, until EOF.

    python -m experiments.lstm_chatbot.chat --workdir=DIR [--temperature=0.8] [--top_k=0]
        [--max_new_tokens=N] [--seed=0]

Characters the model never saw are mapped to their closest known form (NFKD: 'é' -> 'e') or
dropped, with a note on stderr; an empty line is answered like any other prompt. Line breaks
inside a reply print as " / ". Each line's
reply is drawn with its own key, fold_in(seed, line number): a given seed and input replay the
same conversation.
"""

import json
import os
import sys

import jax
import ml_collections
from absl import app, flags, logging

from lab import checkpoint
from lab.errors import LabError
from lab.tasks import seq2seq

flags.DEFINE_string("workdir", None, "The run's --workdir (an lstm_chatbot run).")
flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.")
flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest characters; 0 = all.")
flags.DEFINE_integer("max_new_tokens", 0, "Reply length limit; 0 = the run's config.max_tgt.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
FLAGS = flags.FLAGS


def _load(workdir: str):
    if not workdir:
        raise LabError("--workdir is required: the directory of an lstm_chatbot run")
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise LabError(f"{path} not found: --workdir must be an lstm_chatbot run")
    try:
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
    except json.JSONDecodeError as e:
        raise LabError(f"{path} is corrupt ({e}): --workdir must be an lstm_chatbot run") from e
    if config.get("dataset") != "shakespeare_dialogue" or "attention" not in config.get("model", {}):
        raise LabError(f"{workdir} is not an lstm_chatbot run (its config has no dialogue model)")
    from experiments.lstm_chatbot.__main__ import build
    tokenizer, ids, model_cfg = build(config)
    params, _ = checkpoint.load_params(workdir)
    return config, tokenizer, ids, seq2seq.Seq2SeqTask(model_cfg), params


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only restores: noise between replies
    try:
        if FLAGS.temperature < 0 or FLAGS.top_k < 0 or FLAGS.max_new_tokens < 0:
            raise LabError("--temperature, --top_k and --max_new_tokens must be >= 0")
        config, tokenizer, ids, task, params = _load(FLAGS.workdir)
    except LabError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
    max_new = FLAGS.max_new_tokens or config.max_tgt
    key = jax.random.key(FLAGS.seed)
    for number, line in enumerate(sys.stdin):
        text, dropped = seq2seq.clean_text(line.rstrip("\n"), tokenizer.vocab)
        if dropped:
            print(f"note: ignored characters outside the model's vocabulary: {dropped!r}", file=sys.stderr)
        rows = seq2seq.encode_pairs(tokenizer.encode, [text], [""], config.max_src, config.max_tgt, ids)
        tokens, lengths, _ = task.replies(params, rows, jax.random.fold_in(key, number), max_new,
                                          FLAGS.temperature, FLAGS.top_k or None)
        print(seq2seq.decode_reply(tokenizer, tokens[0], int(lengths[0])).replace("\n", " / "), flush=True)


if __name__ == "__main__":
    app.run(main)
