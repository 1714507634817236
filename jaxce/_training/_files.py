"""The file layout shared by `jaxce.save` and the checkpoints of `jaxce.fit`.

A file is one line of JSON (the header, a dict whose ``"format"`` names the kind
of file) followed by ``\\n`` and an `equinox.tree_serialise_leaves` payload::

    {"format": "jaxce.model/1", ...}\\n
    <eqx.tree_serialise_leaves of a pytree>

`write_file` is the one writer (atomic: a temporary file in the same directory,
flushed and synced, then moved into place with `os.replace`, which is atomic on
POSIX and Windows) and `read_file` the one reader (header parse and format
check). What the header holds beyond ``"format"``, and how the payload is checked,
is up to each kind of file.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import tempfile
from typing import Any, TypeVar

import equinox as eqx
import jax
import numpy as np

T = TypeVar("T")


def tree_signature(tree: Any) -> dict[str, Any]:
    """Tree structure plus the shape and dtype of every array leaf (JSON-able)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return {
        "tree": str(treedef),
        "leaves": [
            [list(np.shape(leaf)), str(np.asarray(leaf).dtype)]
            if not isinstance(leaf, jax.Array)
            else [list(leaf.shape), str(leaf.dtype)]
            for leaf in leaves
        ],
    }


def serialise_leaves(tree: Any) -> bytes:
    """The `equinox.tree_serialise_leaves` bytes of ``tree`` (the payload)."""
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, tree)
    return buffer.getvalue()


def deserialise_leaves(payload: bytes, like: T) -> T:
    """``like`` with its leaves read from ``payload`` (errors are Equinox's own)."""
    return eqx.tree_deserialise_leaves(io.BytesIO(payload), like)


def write_file(path: str | os.PathLike, header: dict[str, Any], payload: bytes) -> None:
    """Write ``header`` as one JSON line, then ``payload``, to ``path`` atomically.

    Parent directories are created. The bytes go to a temporary file next to
    ``path``, which is flushed, synced and moved over ``path`` with `os.replace`,
    so ``path`` holds either its old content or all of the new one.
    """
    path = pathlib.Path(path)
    data = json.dumps(header).encode() + b"\n" + payload
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_file(
    path: str | os.PathLike, fmt: str, not_this_format: Exception
) -> tuple[dict[str, Any], bytes]:
    """The header and payload of a file written by `write_file` with format ``fmt``.

    Raises ``not_this_format`` when the first line is not a JSON dict whose
    ``"format"`` is ``fmt``. The payload is everything after that line (empty when
    the file ends there); checking it is the caller's job. A missing file raises
    the usual `OSError`.
    """
    line, _, payload = pathlib.Path(path).read_bytes().partition(b"\n")
    try:
        header = json.loads(line.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("format") != fmt:
        raise not_this_format
    return header, payload
