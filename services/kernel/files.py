"""Files only their owner may read: secrets, keys, tokens, passwords."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: bytes | str, *, replace: bool = True) -> bool:
    """Write `data` to `path` as a file only its owner may read (0600) from the moment it exists: a new file
    made with that mode, then renamed over `path` (so a replaced file never keeps a wider mode). With
    `replace=False` an existing `path` is kept and False returned."""
    path = Path(path)
    if path.exists() and not replace:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: O_EXCL, mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
