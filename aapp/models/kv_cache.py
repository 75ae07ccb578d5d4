"""The KV cache as aapp hands it to a model and finds it in a layer's arguments.

transformers 5.24 renamed the forward keyword `past_key_values` to `cache` (the old name
still works but warns, until 5.40); releases before it know only the old name. Both
facts live here. The keyword is read off the model's public forward signature, not off a
version number, so a release that moves it again fails here, in one place.
"""

from __future__ import annotations

import functools
import inspect

from torch import nn

NAMES = ("cache", "past_key_values")  # newest first


def new_cache(model: nn.Module):
    """An empty dynamic cache laid out for `model` (sliding-window layers keep only their window)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def cache_kwarg(model: nn.Module) -> str:
    """The keyword under which `model.forward` takes its KV cache."""
    return _kwarg_of(type(model))


@functools.cache
def _kwarg_of(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    for name in NAMES:
        if name in params:
            return name
    raise TypeError(f"{cls.__name__}.forward takes no KV cache keyword (looked for {', '.join(NAMES)})")


def cache_in(kwargs: dict):
    """The cache among the keyword arguments a model, layer or attention module received, or None.

    A caller may still use the old name on a release that has the new one, so both are looked up.
    """
    for name in NAMES:
        found = kwargs.get(name)
        if found is not None:
            return found
    return None
