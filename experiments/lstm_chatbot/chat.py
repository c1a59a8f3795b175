"""Talk to a trained lstm_chatbot run: a reply to each line, until end of input.

    python -m experiments.lstm_chatbot.chat --workdir=DIR [--temperature=0.8] [--top_k=0]
        [--max_new_tokens=N] [--seed=0] [--prompt=auto|on|off]

It first prints a banner (the run, its checkpoint step and model; the sampling settings; how to
quit) on stderr. At a terminal it then asks with a `you> ` prompt and answers `bot> REPLY`; with
its input or output redirected (`--prompt=auto`, the default) stdout holds the replies alone, one
line per input line, for scripts. Quit with Ctrl-D (end of input), Ctrl-C, or a line `/quit`.

A reply is at most `--max_new_tokens` characters (default: the run's `config.max_tgt`, the
longest reply it was trained on). One the model ends itself is shown whole; one the limit stopped
ends at its last sentence end, or else at its last whole word followed by "..." (never
mid-word: `lab.tasks.seq2seq.trim_reply`).

Characters the model never saw are mapped to their closest known form (NFKD: 'é' -> 'e') or
dropped, with a note on stderr; an empty line is answered like any other prompt. Line breaks
inside a reply print as " / ". Each line's reply is drawn with its own key, fold_in(seed, line
number): a given seed and input replay the same conversation. Bad flags or a workdir that holds
no chatbot run end with one `error:` line on stderr and exit status 1.
"""

import importlib
import json
import math
import os
import sys

import jax
import ml_collections
from absl import app, flags, logging

from lab import checkpoint
from lab.errors import LabError
from lab.provenance import read_run_config
from lab.tasks import seq2seq

flags.DEFINE_string("workdir", None, "The run's --workdir (an lstm_chatbot run).")
MAX_LINE_CHARS = 10_000  # an input line's characters kept (its last ones)
MAX_REPLY_FACTOR = 4  # --max_new_tokens at most this many times the run's max_tgt

flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.")
flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest characters; 0 = all.")
flags.DEFINE_integer("max_new_tokens", 0, "Reply length limit in characters; 0 = the run's config.max_tgt.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_enum("prompt", "auto", ["auto", "on", "off"],
                  "Ask with 'you> ' and label replies 'bot> ': auto = when stdin and stdout are a terminal.")
FLAGS = flags.FLAGS

QUIT = ("/quit", "/exit")  # lines that end the conversation
YOU, BOT = "you> ", "bot> "


def _load(workdir: str):
    config = ml_collections.ConfigDict(read_run_config(workdir, "lstm_chatbot", needs=("model.attention", "max_tgt")))
    if config.get("dataset") != "shakespeare_dialogue":
        raise LabError(f"{workdir} is not an lstm_chatbot run (its dataset is {config.get('dataset')!r}, "
                       f"not shakespeare_dialogue): --workdir must be an lstm_chatbot run")
    from experiments.lstm_chatbot.__main__ import build
    tokenizer, ids, model_cfg = build(config)
    params, where = checkpoint.load_params(workdir)
    return config, tokenizer, ids, seq2seq.Seq2SeqTask(model_cfg), params, where


def banner(workdir: str, config, params, where: str, max_new: int, temperature: float, top_k: int,
           seed: int) -> list[str]:
    """The lines the chat prints before the first prompt: which run and model answer, how replies
    are drawn, and how to quit."""
    step = os.path.basename(where)
    step = f"{int(step):,}" if step.isdigit() else step
    total = config.get("num_train_steps")
    num_params = sum(int(x.size) for x in jax.tree.leaves(params))
    m = config.model
    model = ("decoder only (no encoder)" if not m.get("use_encoder", True) else
             "no attention" if m.attention == "none" else f"{m.attention} attention")
    results = os.path.join(workdir, "results.json")
    score = ""
    try:
        with open(results) as f:
            score = f", validation perplexity {json.load(f)['val_perplexity']:.2f}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    drawn = "greedy (temperature 0)" if temperature == 0 else (
        f"sampled at temperature {temperature:g} from " + (f"the {top_k} likeliest characters" if top_k
                                                             else "all characters"))
    return [f"lstm_chatbot run {os.path.abspath(workdir)}: checkpoint step {step}"
            + (f" of {total:,}" if isinstance(total, int) else "")
            + f"; LSTM encoder-decoder, {model}, {num_params:,} parameters{score}",
            f"replies: up to {max_new} characters, {drawn}, seed {seed}",
            "type a line and press Enter for a reply; quit with Ctrl-D, Ctrl-C or /quit"]


def _lines(interactive: bool):
    """The input lines, without their line ends: `input(YOU)` at a terminal (line editing and
    history), else stdin as it comes, each line read in pieces of MAX_LINE_CHARS and only its
    last piece kept (the encoder reads a prompt's last characters), so a huge line costs no memory."""
    if not interactive:
        while True:
            line = sys.stdin.readline(MAX_LINE_CHARS)
            if not line:
                return
            while not line.endswith("\n"):
                more = sys.stdin.readline(MAX_LINE_CHARS)
                if not more:
                    break
                line = (line + more)[-MAX_LINE_CHARS:]
            yield line.rstrip("\n")
        return
    try:
        importlib.import_module("readline")  # input() then edits lines and keeps a history
    except ImportError:
        pass
    while True:
        try:
            yield input(YOU)
        except EOFError:
            print(file=sys.stderr)  # end the prompt's line
            return


def main(argv):
    """Loads the run, prints the banner, then answers each input line (see the module docstring)."""
    del argv
    logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only restores: noise between replies
    try:
        if not (math.isfinite(FLAGS.temperature) and FLAGS.temperature >= 0) or FLAGS.top_k < 0 \
                or FLAGS.max_new_tokens < 0:
            raise LabError("--temperature must be a finite number >= 0, --top_k and --max_new_tokens >= 0")
        config, tokenizer, ids, task, params, where = _load(FLAGS.workdir)
        if FLAGS.max_new_tokens > MAX_REPLY_FACTOR * config.max_tgt:
            raise LabError(f"--max_new_tokens={FLAGS.max_new_tokens} is more than {MAX_REPLY_FACTOR} x the run's "
                           f"max_tgt ({config.max_tgt}), the reply length its decoder learned: use at most "
                           f"{MAX_REPLY_FACTOR * config.max_tgt}")
    except LabError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
    max_new = FLAGS.max_new_tokens or config.max_tgt
    interactive = FLAGS.prompt == "on" or (FLAGS.prompt == "auto" and sys.stdin.isatty() and sys.stdout.isatty())
    print("\n".join(banner(FLAGS.workdir, config, params, where, max_new, FLAGS.temperature, FLAGS.top_k,
                           FLAGS.seed)), file=sys.stderr, flush=True)
    key = jax.random.key(FLAGS.seed)
    try:
        for number, line in enumerate(_lines(interactive)):
            if line.strip() in QUIT:
                break
            text, dropped = seq2seq.clean_text(line, tokenizer.vocab)
            if dropped:
                print(f"note: ignored characters outside the model's vocabulary: {dropped!r}", file=sys.stderr)
            rows = seq2seq.encode_pairs(tokenizer.encode, [text], [""], config.max_src, config.max_tgt, ids)
            tokens, lengths, _ = task.replies(params, rows, jax.random.fold_in(key, number), max_new,
                                              FLAGS.temperature, FLAGS.top_k or None)
            length = int(lengths[0])
            reply = seq2seq.trim_reply(seq2seq.decode_reply(tokenizer, tokens[0], length), complete=length < max_new)
            print((BOT if interactive else "") + reply.replace("\n", " / "), flush=True)
    except KeyboardInterrupt:  # Ctrl-C: a way to quit, not an error
        print(file=sys.stderr)


if __name__ == "__main__":
    from experiments.cli import parse_flags  # the one way every command answers a bad flag

    app.run(main, flags_parser=parse_flags)
