"""What every benchmark records beside its numbers, and how it saves them."""

import json
import os
import platform

import jax


def machine() -> dict:
    """The machine and stack a result was measured on."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__,
            "devices": str(jax.devices())}


def save(result: dict, path: str) -> None:
    """Writes `result` as indented JSON to `path` (folders created) and says where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print("wrote", path)
