"""Test configuration.

The settings every test runs under (KERAS_BACKEND=jax, strict dtype promotion,
rank promotion raises, print options for doctests) live in the repository's root
``conftest.py`` so that the doctests in ``jaxce/`` get them too; pytest loads it
before this file.
"""

# Helper scripts run as subprocesses (with their own argv and XLA_FLAGS), not
# collected as test modules.
collect_ignore = ["distributed"]
