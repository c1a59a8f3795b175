"""Files written whole: a kill mid-write leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import json
import os
from typing import Any


def write_whole(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file beside it (`path.tmp`) and a rename."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_json(path: str, obj: Any, **dumps_kwargs) -> None:
    """`write_whole` of `json.dumps(obj, **dumps_kwargs)`."""
    write_whole(path, json.dumps(obj, **dumps_kwargs))
