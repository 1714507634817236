"""The progress bar of `jaxce.fit` and `jaxce.fit_ensemble`."""

from __future__ import annotations

import sys


class Progress:
    """A tqdm bar (or a plain stderr line when tqdm is missing) for the fits."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str):
        self.bar = None
        self.enabled = enabled
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is an optional dependency
            return
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step")

    def update(self, n: int, step: int, **postfix: float) -> None:
        if not self.enabled:
            return
        if self.bar is None:  # pragma: no cover
            text = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
            print(f"step {step}: {text}", file=sys.stderr)
            return
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
