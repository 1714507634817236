"""Closed forms take exactly the arguments of their loss, by construction."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def same_arguments(
    loss: Callable[P, Any],
) -> Callable[[Callable[..., R]], Callable[P, R]]:
    """Give a closed form the signature of ``loss``: names, defaults, type hints.

    The decorated function is written as ``fn(x, y, *, <options it reads>,
    **options)``. Each call is bound against ``loss``'s signature first (an
    argument ``loss`` does not take raises the same ``TypeError``), defaults are
    filled in, and ``fn`` receives every argument by name. `inspect.signature`
    (and so the API docs and type checkers) shows the loss's parameters with the
    closed form's return annotation: the two cannot drift apart.
    """
    loss_signature = inspect.signature(loss)

    def decorate(fn: Callable[..., R]) -> Callable[P, R]:
        returns = inspect.signature(fn).return_annotation

        @functools.wraps(fn)
        def closed_form(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                bound = loss_signature.bind(*args, **kwargs)
            except TypeError as err:
                raise TypeError(f"closed_form.{fn.__name__}(): {err}") from None
            bound.apply_defaults()
            return fn(*bound.args, **bound.kwargs)

        closed_form.__signature__ = loss_signature.replace(  # type: ignore[attr-defined]
            return_annotation=returns
        )
        del closed_form.__wrapped__  # the signature is the loss's, not fn's
        return closed_form

    return decorate
