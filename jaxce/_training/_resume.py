"""The checkpoint side of one `jaxce.fit` / `jaxce.fit_ensemble` call.

`Checkpointing.open` runs before anything is compiled: it creates
``checkpoint_dir``, takes its exclusive lock (one owner per run directory; a
second run gets `CheckpointError` naming the owner), removes the temporaries
that writers killed mid-write left there, and writes and removes one temporary
to show that the directory is writable. `restore` loads a checkpoint into the
run's fresh state and history; `save` writes one; `close` releases the lock.
Under multi-process JAX only process 0 locks and writes.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from ._checkpoint import (
    FILENAME,
    CheckpointError,
    clean_directory,
    load_checkpoint,
    save_checkpoint,
)
from ._files import create_temporary
from ._lock import DirectoryLock, LockError


def drop_off_grid_end(
    saved: dict[str, np.ndarray], start: int, steps: int, log_every: int
) -> dict[str, np.ndarray]:
    """Drop the saved log entry of the previous call's last step when it is off-grid.

    A call logs the multiples of ``log_every`` and its own last step. When a later
    call goes on past that step, an off-grid entry there would not exist in an
    uninterrupted run, so it is removed: the logged steps then depend only on the
    total ``steps`` (and ``log_every``), not on where the run was interrupted.
    Metrics keep their logged steps on the last axis (ensembles: members first).
    """
    if start >= steps or start % log_every == 0:
        return saved
    keep = np.asarray(saved["step"]) != start
    return {k: v if k == "loss" else np.asarray(v)[..., keep] for k, v in saved.items()}


class Checkpointing:
    """Checkpoints of one call in ``directory`` (``None``: every method a no-op)."""

    def __init__(self, directory: str | os.PathLike | None, every: int | None):
        self.directory = directory
        self.every = every
        self.lock = None if directory is None else DirectoryLock(directory)

    def open(self) -> None:
        if self.lock is None or jax.process_index() != 0:
            return
        try:
            self.lock.acquire()
        except LockError as err:
            raise CheckpointError(f"`checkpoint_dir` {err}") from None
        directory = self.lock.directory
        try:
            clean_directory(directory)
            fd, tmp = create_temporary(directory / FILENAME)
            os.close(fd)
            os.unlink(tmp)
        except OSError as err:
            self.close()
            raise CheckpointError(
                f"`checkpoint_dir` {os.fspath(directory)!r} is not writable: {err}."
            ) from None

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def restore(self, params, opt_state, meta, parts, steps: int, log_every: int):
        """``(params, opt_state, start, parts)``, from the checkpoint if any."""
        if self.directory is None:
            return params, opt_state, 0, parts
        loaded = load_checkpoint(
            self.directory, params=params, opt_state=opt_state, meta=meta
        )
        if loaded is None:
            return params, opt_state, 0, parts
        params, opt_state, start, saved = loaded
        if start > steps:
            raise ValueError(
                f"the checkpoint in {os.fspath(self.directory)!r} is at step "
                f"{start}, beyond `steps`={steps}."
            )
        if set(saved) != set(parts):
            raise CheckpointError(
                f"the checkpoint's history has metrics {sorted(saved)}, this run "
                f"logs {sorted(parts)} (pass the same `eval_data`)."
            )
        saved = drop_off_grid_end(saved, start, steps, log_every)
        return params, opt_state, start, {k: [v] for k, v in saved.items()}

    def due(self, stop: int, steps: int) -> bool:
        """Whether the state after step ``stop`` is saved."""
        if self.directory is None:
            return False
        return stop == steps or bool(self.every and stop % self.every == 0)

    def save(self, params: Any, opt_state: Any, stop: int, history, meta) -> None:
        assert self.directory is not None
        save_checkpoint(
            self.directory,
            params=params,
            opt_state=opt_state,
            step=stop,
            history=history,
            meta=meta,
        )
