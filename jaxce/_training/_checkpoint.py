"""Atomic training checkpoints for `jaxce.fit` and `jaxce.fit_ensemble`.

File layout (``<checkpoint_dir>/fit_checkpoint.eqx``; `._files` adds the CRC-32
trailer that covers every byte, header included)::

    {"format": "jaxce.fit.checkpoint/2", "step": 200, "meta": {...}, ...}\\n
    <eqx.tree_serialise_leaves of (parameters, optimizer state, history)>
    JAXCECRC<crc32>

The header records the step reached and ``meta``: the kind of run, the data-order
key(s), the batch size, a fingerprint of the training data, and the structure of
the parameters and of the optimizer state (tree, leaf paths, shapes, dtypes).
Loading compares each with the run being resumed and raises `CheckpointError`
saying what differs, so a resumed run never silently restarts or trains on
something else. Hyperparameter *values* are not compared: a run resumed with
another learning rate continues with the new one (fine-tuning), also when the
optimizer keeps it in its state (`optax.inject_hyperparams`).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import zlib
from typing import Any

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils

from ._files import (
    deserialise_leaves,
    read_file,
    remove_stale_temporaries,
    serialise_leaves,
    tree_signature,
    write_file,
)

FILENAME = "fit_checkpoint.eqx"
FORMAT = "jaxce.fit.checkpoint/2"
_INJECTED = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


class CheckpointError(ValueError):
    """A checkpoint that is corrupt, in use, or does not match the run resuming it.

    Also raised, before anything is compiled, for a ``checkpoint_dir`` that is
    not a directory, cannot be created or written, or is locked by another run.
    """


def data_fingerprint(*arrays: Any) -> list[Any]:
    """Shape, dtype and CRC-32 of the bytes of each array."""
    out = []
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        out.append([list(a.shape), str(a.dtype), zlib.crc32(a.tobytes())])
    return out


def state_signature(tree: Any) -> dict[str, Any]:
    """`tree_signature` plus the path of every leaf (for the mismatch message)."""
    out = tree_signature(tree)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    out["paths"] = [jax.tree_util.keystr(path) for path, _ in leaves]
    return out


def _host(a: Any) -> np.ndarray:
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)


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
    host = jax.tree.map(_host, (params, opt_state))
    if jax.process_index() != 0:
        return path
    body = serialise_leaves((*host, history))
    header = {
        "format": FORMAT,
        "step": step,
        "meta": meta,
        "history": {k: list(v.shape) for k, v in history.items()},
    }
    write_file(path, header, body)
    return path


def clean_directory(directory: str | os.PathLike) -> list[str]:
    """Remove every checkpoint temporary (call with the directory's lock held)."""
    return remove_stale_temporaries(pathlib.Path(directory) / FILENAME, everyone=True)


def _window(a: str, b: str, width: int = 60) -> tuple[str, str]:
    i = next((k for k, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
    lo = max(0, i - width // 2)
    cut = [
        ("..." if lo else "")
        + s[lo : i + width]
        + ("..." if len(s) > i + width else "")
        for s in (a, b)
    ]
    return cut[0], cut[1]


def _types(tree: str) -> list[str]:
    return re.findall(r"CustomNode\((?:namedtuple\[)?(\w+)", tree)


def _describe(name: str, saved: Any, ours: Any) -> str:
    """What differs between two ``meta`` entries, in words."""
    if not (isinstance(saved, dict) and isinstance(ours, dict) and "tree" in saved):
        return f"checkpoint: {_short(saved)}; this run: {_short(ours)}"
    if saved["tree"] != ours["tree"]:
        kinds = [" > ".join(_types(s["tree"])) or "no nodes" for s in (saved, ours)]
        if kinds[0] != kinds[1]:
            text = (
                f"its tree holds {kinds[0]} in the checkpoint and {kinds[1]} in this "
                "run"
            )
        else:
            a, b = _window(saved["tree"], ours["tree"])
            text = f"its tree is {a} in the checkpoint and {b} in this run"
        return f"{text} ({len(saved['leaves'])} and {len(ours['leaves'])} arrays)" + (
            "; another optimizer?" if name == "opt_state" else ""
        )
    diffs = [
        f"{ours.get('paths', [''] * (i + 1))[i] or f'leaf {i}'} is "
        f"{a[1]}{a[0]} in the checkpoint and {b[1]}{b[0]} in this run"
        for i, (a, b) in enumerate(zip(saved["leaves"], ours["leaves"]))
        if a != b
    ]
    more = f" (and {len(diffs) - 1} more arrays)" if len(diffs) > 1 else ""
    return (diffs[0] + more) if diffs else "its arrays differ"


def _refresh_hyperparams(restored: Any, fresh: Any) -> Any:
    """``restored`` with the injected hyperparameters of this run's optimizer."""

    def pick(r, f):
        if isinstance(r, _INJECTED):
            return r._replace(hyperparams=f.hyperparams)
        return r

    return jax.tree.map(
        pick, restored, fresh, is_leaf=lambda t: isinstance(t, _INJECTED)
    )


def _corrupt(text: str) -> CheckpointError:
    return CheckpointError(f"{text} Delete it or use another `checkpoint_dir`.")


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
    header, body = read_file(path, FORMAT, _corrupt, what="a jaxce.fit checkpoint")
    saved = header.get("meta")
    step = header.get("step")
    shapes = header.get("history")
    if not (
        isinstance(saved, dict) and isinstance(step, int) and isinstance(shapes, dict)
    ):
        raise CheckpointError(f"{path} has an incomplete header; delete it.")
    differ = [
        f"`{name}` differs ({_describe(name, saved.get(name), meta.get(name))})"
        for name in sorted(set(saved) | set(meta))
        if saved.get(name) != meta.get(name)
    ]
    if differ:
        raise CheckpointError(
            f"checkpoint {path} does not match this run: {'; '.join(differ)}. "
            "Resume with the same model, optimizer, data, batch_size and key, or "
            "use another `checkpoint_dir`."
        )
    history_like = {
        k: np.zeros(shape, np.int32 if k == "step" else np.float32)
        for k, shape in shapes.items()
    }
    try:
        p, o, history = deserialise_leaves(body, (params, opt_state, history_like))
    except Exception as err:  # eqx raises several types for bad payloads
        raise CheckpointError(f"checkpoint {path} could not be read: {err}") from err
    return p, _refresh_hyperparams(o, opt_state), step, history


def _short(value: Any, limit: int = 200) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."
