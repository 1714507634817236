"""The file layout shared by `jaxce.save` and the checkpoints of `jaxce.fit`.

A file is one line of JSON (the header, a dict whose ``"format"`` names the kind
of file), ``\\n``, an `equinox.tree_serialise_leaves` payload, and a 12-byte
trailer: ``JAXCECRC`` and the CRC-32 (little-endian) of every byte before it::

    {"format": "jaxce.model/2", ...}\\n
    <eqx.tree_serialise_leaves of a pytree>
    JAXCECRC<crc32>

The CRC covers the header too, so any flipped bit, truncation or appended byte
anywhere is detected before the header is trusted (CRC-32 detects every error
burst of up to 32 bits). `write_file` is the one writer and `read_file` the one
reader. Writes are atomic: a temporary file next to the target (named after the
writer's host and pid, created with mode ``0o666`` so the umask applies, as for
any file the user writes), flushed, synced and moved into place with
`os.replace` (atomic on POSIX and Windows). `remove_stale_temporaries` deletes
the temporaries that writers killed mid-write left behind.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import secrets
import socket
import struct
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import equinox as eqx
import jax
import numpy as np

T = TypeVar("T")

MAGIC = b"JAXCECRC"
TRAILER_BYTES = len(MAGIC) + 4


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


def _host() -> str:
    return socket.gethostname().replace(".", "-") or "host"


def temporary_prefix(path: pathlib.Path) -> str:
    """The temporaries of ``path`` are named ``<prefix><host>.<pid>.<token>.tmp``."""
    return f".{path.name}."


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (unknown: assumed alive)."""
    if os.name != "posix":  # os.kill(pid, 0) is no probe on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike, *, everyone: bool) -> list[str]:
    """Delete the temporaries of ``path`` whose writers are gone; their names.

    ``everyone=False``: those written from this host by a process that no longer
    exists. ``everyone=True``: all of them (the caller holds the lock that every
    writer of ``path`` takes, so none is still writing).
    """
    path = pathlib.Path(path)
    prefix, removed = temporary_prefix(path), []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        parts = name[len(prefix) : -len(".tmp")].split(".")
        if not everyone:
            if len(parts) != 3 or parts[0] != _host() or not parts[1].isdigit():
                continue
            if pid_alive(int(parts[1])):
                continue
        try:
            os.unlink(path.parent / name)
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def create_temporary(path: pathlib.Path) -> tuple[int, pathlib.Path]:
    """A new, empty temporary file next to ``path``: ``(fd, its path)``."""
    while True:
        name = f"{temporary_prefix(path)}{_host()}.{os.getpid()}."
        tmp = path.parent / f"{name}{secrets.token_hex(4)}.tmp"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # pragma: no cover - a 32-bit token collision
            continue


def write_file(path: str | os.PathLike, header: dict[str, Any], payload: bytes) -> None:
    """Write ``header`` as one JSON line, ``payload`` and the CRC trailer, atomically.

    Parent directories are created. The bytes go to a temporary file next to
    ``path``, which is flushed, synced and moved over ``path`` with `os.replace`,
    so ``path`` holds either its old content or all of the new one.
    """
    path = pathlib.Path(path)
    data = json.dumps(header).encode() + b"\n" + payload
    data += MAGIC + struct.pack("<I", zlib.crc32(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path, everyone=False)
    fd, tmp = create_temporary(path)
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


def _header(line: bytes) -> dict[str, Any] | None:
    try:
        header = json.loads(line.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) else None


def read_file(
    path: str | os.PathLike,
    fmt: str,
    error: Callable[[str], Exception],
    *,
    what: str,
    unchecked: tuple[str, ...] = (),
) -> tuple[dict[str, Any], bytes]:
    """The header and payload of a file written by `write_file` with format ``fmt``.

    The trailer's CRC is checked first, over the whole file. Raises
    ``error(message)`` when the file is corrupt (CRC mismatch, no trailer) or is
    not a file of format ``fmt`` (``what`` names the kind of file in the
    message). Files of a format in ``unchecked`` (written before the trailer
    existed) are read without it. A missing file raises the usual `OSError`.
    """
    name = os.fspath(path)
    data = pathlib.Path(path).read_bytes()
    body, trailer = data[:-TRAILER_BYTES], data[-TRAILER_BYTES:]
    if len(data) >= TRAILER_BYTES and trailer.startswith(MAGIC):
        (crc,) = struct.unpack("<I", trailer[len(MAGIC) :])
        if zlib.crc32(body) != crc:
            raise error(
                f"{name!r} is corrupt: its CRC-32 does not match its contents (a "
                "modified or damaged file)."
            )
        header = _header(body.partition(b"\n")[0])
        if header is None or header.get("format") != fmt:
            raise error(f"{name!r} is not {what} (format {fmt!r}).")
        return header, body.partition(b"\n")[2]
    line, _, payload = data.partition(b"\n")
    header = _header(line)
    if header is not None and header.get("format") in unchecked:
        return header, payload
    if header is not None and header.get("format") == fmt:
        raise error(
            f"{name!r} is corrupt: its CRC trailer is missing or damaged (a "
            "truncated or modified file)."
        )
    if header is not None:
        raise error(
            f"{name!r} is not {what}: its format is {header.get('format')!r}, not "
            f"{fmt!r}."
        )
    raise error(f"{name!r} is not {what} (unreadable header).")
