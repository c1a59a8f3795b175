"""What the experiments package holds, read from its own files: the experiments, their variants
and config keys, the other commands, and where a `--config` argument points.

Nothing here is a table to keep up to date. An experiment is a subpackage with a `__main__.py`
and a `config.py`; its one-line summary is the first sentence of its config module's docstring;
its variants are the names `get_config` compares `variant` with, each described by its entry in
that docstring (an indented line that starts with the name, or with `(default)`, then its command
and description); its keys are its `get_config()`, flattened, with the comment of the line that
sets each (`c.key = value  # comment`). `python -m experiments` and an experiment's `--help` print
these (`listing`, `experiment_help`); `resolve_config_argument` turns the `--config` forms a user
may type into the absolute path ml_collections loads.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import textwrap

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Paths such as `experiments/mlp_classifier/config.py` are relative to the folder that holds the
# package: the clone's root, or site-packages in an installed copy.
PACKAGE_PARENT = os.path.dirname(PACKAGE_DIR)
DESCRIPTION_WIDTH = 100  # characters of a variant's one-line description before it is cut
MIN_CLAUSE = 25  # a shorter first clause says too little to stand for the description
CONFIG_FORMS = ("NAME:VARIANT (e.g. --config=mlp_classifier:digits_tuned), :VARIANT or VARIANT for this "
                "experiment's own, or a config file's path")


class ConfigArgumentError(ValueError):
    """A `--config` value that names no config file: the message says what to type instead."""


def experiment_names() -> list[str]:
    """The experiments, sorted: the subpackages with both a `__main__.py` and a `config.py`."""
    return sorted(name for name in os.listdir(PACKAGE_DIR)
                  if os.path.isfile(os.path.join(PACKAGE_DIR, name, "__main__.py"))
                  and os.path.isfile(os.path.join(PACKAGE_DIR, name, "config.py")))


def config_file(name: str) -> str:
    """The absolute path of experiment `name`'s config file."""
    return os.path.join(PACKAGE_DIR, name, "config.py")


def _module_tree(path: str) -> ast.Module:
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


def _first_sentence(text: str) -> str:
    """Up to the first '.', '!' or '?' that ends a word outside brackets ('(e.g. 0.999)' stays)."""
    text = " ".join(text.split())
    depth = 0
    for i, ch in enumerate(text):
        depth += 1 if ch in "([" else -1 if ch in ")]" else 0
        if depth == 0 and ch in ".!?" and text[i + 1:i + 2] in ("", " "):
            return text[:i]
    return text


def summary(path: str) -> str:
    """The first sentence of a module's docstring (for a config file: 'Configs of the X' -> 'the X')."""
    doc = ast.get_docstring(_module_tree(path)) or ""
    return re.sub(r"^Configs? of ", "", _first_sentence(doc.split("\n\n")[0]))


def _variant_tests(path: str) -> list[ast.Compare]:
    """The `variant == ...` and `variant in (...)` tests of `get_config` in `path`, in source order."""
    functions = [node for node in _module_tree(path).body
                 if isinstance(node, ast.FunctionDef) and node.name == "get_config"]
    return sorted((node for node in (ast.walk(functions[0]) if functions else ())
                   if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name)
                   and node.left.id == "variant" and isinstance(node.ops[0], (ast.Eq, ast.In))),
                  key=lambda node: (node.lineno, node.col_offset))


def variant_names(path: str) -> list[tuple[str, ...]]:
    """The variants `get_config` of the config file at `path` accepts, in the order it tests them.

    Each entry is a tuple of names for one config: the first entry holds the default (''), with
    any name that also selects it (`variant in (None, '', 'fashion')` -> ('', 'fashion')).
    """
    entries: list[tuple[str, ...]] = [("",)]
    seen = {""}
    for node in _variant_tests(path):
        compared = node.comparators[0]
        values = compared.elts if isinstance(compared, (ast.Tuple, ast.List, ast.Set)) else [compared]
        names = [v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
        is_default = any(isinstance(v, ast.Constant) and v.value in (None, "") for v in values)
        new = tuple(n for n in names if n not in seen)
        seen.update(new)
        if is_default:
            entries[0] += tuple(n for n in new if n)
        else:
            entries.extend((n,) for n in new)
    return entries


def variant_descriptions(path: str) -> dict[str, str]:
    """Variant name ('' for the default) -> the one-line description its docstring entry gives."""
    names = {n for entry in variant_names(path) for n in entry if n}
    lines = (ast.get_docstring(_module_tree(path)) or "").splitlines()
    described: dict[str, str] = {}
    for i, line in enumerate(lines):
        match = re.match(r"(\s+)(\(default\)|\w+(?:, \w+)*)(\s+python -m .*)?$", line)
        if not match:
            continue
        heads = ["" if h == "(default)" else h for h in match[2].split(", ")]
        if not all(h == "" or h in names for h in heads):
            continue
        words = []
        for follow in lines[i + 1:]:  # the entry: lines indented deeper than its name
            if not follow.strip() or len(follow) - len(follow.lstrip()) <= len(match[1]):
                break
            if not follow.strip().startswith("python -m "):
                words.append(follow.strip())
        text = re.sub(r"^\(the default\)\s*", "", " ".join(words))
        for head in heads:
            described.setdefault(head, one_line(text))
    return described


def one_line(text: str, width: int = DESCRIPTION_WIDTH) -> str:
    """The first sentence of `text`. Past `width` characters: up to its first ':' or ';' (outside
    brackets), else its last ',' within `width`, else its first `width` characters cut at a word
    and marked with '...'."""
    sentence = _first_sentence(text)
    if len(sentence) <= width:
        return sentence
    depth, last_comma = 0, None
    for i, ch in enumerate(sentence[:width]):
        depth += 1 if ch in "([" else -1 if ch in ")]" else 0
        if depth == 0 and ch in ":;" and i >= MIN_CLAUSE:
            return sentence[:i]
        if depth == 0 and ch == "," and i >= MIN_CLAUSE:
            last_comma = i
    return sentence[:last_comma] if last_comma else textwrap.shorten(sentence, width, placeholder=" ...")


def _key_comments(path: str) -> dict[str, str]:
    """Config key -> the comment of the line in `path` that sets its default, before `get_config`
    tests a variant (`c.model.width = 128  # ...`)."""
    tests = _variant_tests(path)
    end = tests[0].lineno if tests else None
    comments: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f.read().splitlines()[:end and end - 1]:
            match = re.match(r"\s*c\.([\w.]+) = [^#]*#\s*(.+)$", line)
            if match:
                comments.setdefault(match[1], match[2].strip())
    return comments


def flat_items(config, prefix: str = "") -> list[tuple[str, object]]:
    """`(dotted key, value)` of every leaf of a ConfigDict, sorted by key."""
    out = []
    for key, value in sorted(config.items()):
        if hasattr(value, "items"):
            out.extend(flat_items(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def config_lines(config, path: str, default=None) -> list[str]:
    """`key = value  # comment` for every key of `config`, a variant of the config file at `path`
    whose `default` config is given (None: `config` is the default). The comment is that of the
    line setting the default, kept where the value is the default's; a None that takes another
    type says which (`data_dir = None (or a str)`)."""
    comments = _key_comments(path)
    defaults = dict(flat_items(default if default is not None else config))
    lines = []
    for key, value in flat_items(config):
        text = f"{key} = {value!r}"
        parent, _, leaf = key.rpartition(".")
        if value is None:
            try:
                field_type = (config if not parent else _lookup(config, parent)).get_type(leaf)
            except (AttributeError, KeyError, TypeError):
                field_type = None
            if isinstance(field_type, type) and field_type is not type(None):
                article = "an" if field_type.__name__[0] in "aeiou" else "a"
                text += f" (or {article} {field_type.__name__})"
        if key in comments and key in defaults and defaults[key] == value:
            text += f"  # {comments[key]}"
        lines.append(text)
    return lines


def _lookup(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def load_config(path: str, variant: str):
    """`get_config(variant)` of the config file at `path` (ValueError: no such variant)."""
    spec = importlib.util.spec_from_file_location("experiment_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def resolve_config_argument(value: str, own_config: str) -> str:
    """The absolute `PATH[:VARIANT]` that a `--config` value names.

    Forms: `NAME[:VARIANT]` (an experiment's config), `:VARIANT` and a bare `VARIANT` (those of
    `own_config`, the running experiment's file), or `PATH[:VARIANT]`: a path that exists from
    the current folder, else one relative to the folder holding the package (so
    `experiments/NAME/config.py` works from any folder).

    Raises:
      ConfigArgumentError: nothing of that name; the message lists the forms.
    """
    path, colon, variant = value.partition(":")
    names = experiment_names()
    looks_like_a_name = "/" not in path and os.sep not in path and not path.endswith(".py")
    if not path:
        found = own_config
    elif os.path.isfile(path):
        found = os.path.abspath(path)
    elif looks_like_a_name and path in names:
        found = config_file(path)
    elif looks_like_a_name and not colon:  # a variant of this experiment's config
        found, colon, variant = own_config, ":", path
    elif looks_like_a_name:
        raise ConfigArgumentError(f"--config={value}: no experiment {path!r}; use one of {', '.join(names)} "
                                  f"(python -m experiments lists them)")
    elif not os.path.isabs(path) and os.path.isfile(os.path.join(PACKAGE_PARENT, path)):
        found = os.path.join(PACKAGE_PARENT, path)
    else:
        raise ConfigArgumentError(f"--config={value}: no such file {path} (looked in {os.getcwd()}"
                                  + ("" if os.path.isabs(path) else f" and {PACKAGE_PARENT}")
                                  + f"); write {CONFIG_FORMS}")
    return f"{found}{colon}{variant}"


def _runs_as_main(path: str) -> bool:
    """Whether the module at `path` has a top-level `if __name__ == "__main__":`."""
    for node in _module_tree(path).body:
        test = node.test if isinstance(node, ast.If) else None
        if (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
                and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "__main__"):
            return True
    return False


def _tools() -> list[tuple[str, str]]:
    """(module, summary) of the package's other commands: the modules run with `python -m` that
    are not an experiment's `__main__` or `config`."""
    found = []
    for folder, _, files in sorted(os.walk(PACKAGE_DIR)):
        for file in sorted(files):
            if not file.endswith(".py") or file in ("__init__.py", "__main__.py", "config.py"):
                continue
            path = os.path.join(folder, file)
            if not _runs_as_main(path):
                continue
            module = os.path.relpath(path, PACKAGE_PARENT)[:-3].replace(os.sep, ".")
            found.append((module, summary(path)))
    return found


def listing() -> str:
    """What `python -m experiments` prints: each experiment in one line, the other commands, and
    how to get an experiment's help."""
    names = experiment_names()
    width = max(len(n) for n in names) + 2
    lines = ["usage: python -m experiments.NAME --workdir=DIR [--config=NAME:VARIANT] [--config.KEY=VALUE ...]",
             "", "experiments:"]
    for name in names:
        variants = [e[0] for e in variant_names(config_file(name)) if e[0]]
        lines.append(f"  {name:<{width}}{summary(config_file(name))}"
                     + (f"; variants: {', '.join(variants)}" if variants else ""))
    lines += ["", "other commands (python -m MODULE --help):"]
    tools = _tools()
    tool_width = max(len(m) for m, _ in tools) + 2 if tools else 0
    lines += [f"  {module:<{tool_width}}{text}" for module, text in tools]
    lines += ["", "python -m experiments.NAME --help: its variants, every config key with its default, its flags."]
    return "\n".join(lines)


def experiment_help(name: str, path: str, variant: str, config, flag_lines: list[str]) -> str:
    """What `python -m experiments.NAME --help` prints: usage, the variants of the config file at
    `path`, the keys of `config` (its variant `variant`) with their values, and `flag_lines`."""
    default = load_config(path, "") if variant else None
    entries = variant_names(path)
    described = variant_descriptions(path)
    labels = [" or ".join(e[1:]) + " (default)" if e[0] == "" and len(e) > 1 else
              "(default)" if e[0] == "" else e[0] for e in entries]
    width = max(len(label) for label in labels) + 2
    about = summary(path)
    lines = [f"usage: python -m experiments.{name} --workdir=DIR [--config={name}:VARIANT] [--config.KEY=VALUE ...]",
             "", f"{about[:1].upper()}{about[1:]}. A rerun with the same --workdir resumes its run.", "",
             f"variants, as --config={name}:VARIANT or --config=:VARIANT (more of each in {path}):"]
    for entry, label in zip(entries, labels):
        text = next((described[n] for n in entry if n in described), "")
        lines.append(f"  {label:<{width}}{text}".rstrip())
    shown = f"variant {variant}" if variant else "the default"
    lines += ["", f"config keys of {shown}, each set with --config.KEY=VALUE:"]
    lines += [f"  {line}" for line in config_lines(config, path, default)]
    lines += ["", "flags:", *flag_lines, "  --helpfull: every flag, absl's own too"]
    return "\n".join(lines)
