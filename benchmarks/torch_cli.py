"""The command line every PyTorch yardstick script shares (`lstm_torch`, `generative_torch`,
`nanogpt_torch`): which recipes, how many steps, how many threads, and one JSON line out.

It imports torch only, never jax or lab: the yardsticks run under a Python that may have torch
and nothing else (`common.torch_yardstick` starts them).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence

import torch


def parser(doc: str, recipes: Sequence[str], warmup: int) -> argparse.ArgumentParser:
    """A parser with `--recipes` (comma-separated, of `recipes`; default the first), `--steps`
    (50), `--warmup` (`warmup`) and `--threads` (torch.set_num_threads; 0: PyTorch's default);
    the script adds its shape flags."""
    out = argparse.ArgumentParser(description=doc.splitlines()[0])
    out.add_argument("--recipes", default=recipes[0], help=f"comma-separated, of {', '.join(recipes)}")
    out.add_argument("--steps", type=int, default=50)
    out.add_argument("--warmup", type=int, default=warmup)
    out.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0: PyTorch's default")
    return out


def run(parser_: argparse.ArgumentParser, recipes: Sequence[str], measure: Callable[[str, argparse.Namespace], dict]) -> None:
    """Parses the flags, measures each chosen recipe in turn (`measure(recipe, args)`) and prints
    one JSON line: {"torch": version, "threads": n, "recipes": {name: measure's dict}}."""
    args = parser_.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = args.recipes.split(",")
    for r in chosen:
        if r not in recipes:
            parser_.error(f"unknown recipe {r!r}: use {', '.join(recipes)}")
    results = {r: measure(r, args) for r in chosen}
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "recipes": results}))
