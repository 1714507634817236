"""Test configuration.

The settings every test runs under (KERAS_BACKEND=jax, strict dtype promotion,
rank promotion raises, 8 host CPU devices, print options for doctests) live in
the repository's root ``conftest.py`` so that the doctests in ``jaxce/`` get them
too; pytest loads it before this file.

Layout: ``test_<family>.py`` holds a loss family and its closed forms (softmax,
probability, binary, focal, information); the generic checks (``test_options``,
``test_dtypes``, ``test_transformations``, ``test_errors``, ``test_closed_form``,
``test_numerics``) loop over the registry in ``losses.py``; ``peers/`` compares
with PyTorch, Keras, scikit-learn and optax. Shared code: ``helpers.py``,
``losses.py``, ``strategies.py`` (hypothesis), ``training_data.py``; this
directory is on ``sys.path`` (pytest inserts it for this conftest), so tests
import them as top-level modules, also from ``peers/``.
"""

# Helper scripts run as subprocesses (with their own argv and XLA_FLAGS), not
# collected as test modules.
collect_ignore = ["distributed"]
