"""scikit-learn's bundled data sets, split and standardised (no download).

The tests train on exactly the data the examples use: one loader,
``examples/example_data.py``, serves both.
"""

from __future__ import annotations

import importlib.util
import pathlib

_PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "example_data.py"
_spec = importlib.util.spec_from_file_location("example_data", _PATH)
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)

load = _module.load
"""``(x_train, x_test, y_train, y_test)`` with a fixed stratified 75/25 split."""
