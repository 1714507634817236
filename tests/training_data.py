"""scikit-learn's bundled data sets, split and standardised (no download).

The tests train on exactly the data the examples use: one loader,
``examples/example_data.py``, serves both.
"""

from __future__ import annotations

from helpers import load_example

load = load_example("example_data").load
"""``(x_train, x_test, y_train, y_test)`` with a fixed stratified 75/25 split."""
