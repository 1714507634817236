"""Atomic training checkpoints for `jaxce.fit`: a JSON header line + Equinox leaves.

File layout (``<checkpoint_dir>/fit_checkpoint.eqx``)::

    {"format": "jaxce.fit.checkpoint/1", "step": 200, "meta": {...}, ...}\\n
    <eqx.tree_serialise_leaves of (parameters, optimizer state, history)>

The header records the step reached, the data-order key, the batch size, a
fingerprint of the training data and the structure (tree, shapes, dtypes) of the
parameters and of the optimizer state, plus a CRC-32 of the payload. Loading
compares all of them with the run being resumed and raises `CheckpointError`
naming what differs, so a resumed run never silently restarts or trains on
something else. Files are written atomically (a temporary file in the same
directory, moved into place with `os.replace`).
"""

from __future__ import annotations

import json
import os
import pathlib
import zlib
from typing import Any

import jax
import numpy as np

from ._files import deserialise_leaves, read_file, serialise_leaves, write_file

FILENAME = "fit_checkpoint.eqx"
FORMAT = "jaxce.fit.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that is corrupt or does not match the run resuming from it."""


def data_fingerprint(*arrays: Any) -> list[Any]:
    """Shape, dtype and CRC-32 of the bytes of each array."""
    out = []
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        out.append([list(a.shape), str(a.dtype), zlib.crc32(a.tobytes())])
    return out


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    params: Any,
    opt_state: Any,
    step: int,
    history: dict[str, np.ndarray],
    meta: dict[str, Any],
) -> pathlib.Path:
    """Write the state after ``step`` steps; only process 0 writes."""
    path = pathlib.Path(directory) / FILENAME
    if jax.process_index() != 0:
        return path
    host = jax.tree.map(np.asarray, (params, opt_state))
    body = serialise_leaves((*host, history))
    header = {
        "format": FORMAT,
        "step": step,
        "meta": meta,
        "history": {k: list(v.shape) for k, v in history.items()},
        "payload_bytes": len(body),
        "payload_crc32": zlib.crc32(body),
    }
    write_file(path, header, body)
    return path


def _read(path: pathlib.Path) -> tuple[dict[str, Any], bytes]:
    header, body = read_file(
        path,
        FORMAT,
        CheckpointError(
            f"{path} is not a jaxce.fit checkpoint (unreadable header); delete it or "
            "use another `checkpoint_dir`."
        ),
    )
    if len(body) != header.get("payload_bytes") or zlib.crc32(body) != header.get(
        "payload_crc32"
    ):
        raise CheckpointError(
            f"{path} is corrupt: its payload is {len(body)} bytes with a CRC-32 that "
            "does not match its header (a truncated or modified file)."
        )
    return header, body


def load_checkpoint(
    directory: str | os.PathLike,
    *,
    params: Any,
    opt_state: Any,
    meta: dict[str, Any],
) -> tuple[Any, Any, int, dict[str, np.ndarray]] | None:
    """Parameters, optimizer state, step and history saved in ``directory``.

    Returns ``None`` when there is no checkpoint yet. ``params`` and ``opt_state``
    are the fresh ones of the run, used as the structure to read into; ``meta``
    must equal the saved one entry by entry.
    """
    path = pathlib.Path(directory) / FILENAME
    if not path.exists():
        return None
    header, body = _read(path)
    saved = header["meta"]
    for name in sorted(set(saved) | set(meta)):
        if saved.get(name) != meta.get(name):
            raise CheckpointError(
                f"checkpoint {path} does not match this run: `{name}` differs "
                f"(checkpoint: {_short(saved.get(name))}; this run: "
                f"{_short(meta.get(name))}). Resume with the same model, optimizer, "
                "data, batch_size and key, or use another `checkpoint_dir`."
            )
    history_like = {
        k: np.zeros(shape, np.int32 if k == "step" else np.float32)
        for k, shape in header["history"].items()
    }
    try:
        p, o, history = deserialise_leaves(body, (params, opt_state, history_like))
    except Exception as err:  # eqx raises several types for bad payloads
        raise CheckpointError(f"checkpoint {path} could not be read: {err}") from err
    return p, o, int(header["step"]), history


def _short(value: Any, limit: int = 200) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."
