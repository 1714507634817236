"""The loss families, one module each: ``prepare -> formula -> reduce``.

Re-exported from `jaxce`; every option is read by `jaxce._core`.
"""
