"""Shallow copies of module trees: new module objects and registries sharing the same tensors.

Used wherever funcattr needs a private version of a user's module (canonizer views, the
rule-applied tree of ``functionalize``) without ever writing to the user's modules.
"""

from __future__ import annotations

import copy
import types as pytypes

from torch import nn

__all__ = ["clone_tree", "shallow_copy"]


def shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object with its own parameter, buffer and child registries.

    The registries hold the same tensors and child modules as ``module``; instance methods
    bound to ``module`` (e.g. a ``forward`` override) are re-bound to the copy. Changing a
    registry entry of the copy never affects ``module``.
    """
    new = copy.copy(module)
    state = new.__dict__
    state["_parameters"] = dict(module._parameters)
    state["_buffers"] = dict(module._buffers)
    state["_non_persistent_buffers_set"] = set(module._non_persistent_buffers_set)
    state["_modules"] = dict(module._modules)
    for key, value in list(state.items()):
        if isinstance(value, pytypes.MethodType) and value.__self__ is module:
            state[key] = pytypes.MethodType(value.__func__, new)
    return new


def clone_tree(module: nn.Module, memo: dict[int, nn.Module] | None = None) -> nn.Module:
    """:func:`shallow_copy` of every module in the tree under ``module``.

    ``memo`` maps ``id`` of an original module to its copy; a module that occurs twice in the
    tree is copied once.
    """
    memo = {} if memo is None else memo
    if id(module) in memo:
        return memo[id(module)]
    new = shallow_copy(module)
    memo[id(module)] = new
    new.__dict__["_modules"] = {
        name: None if child is None else clone_tree(child, memo)
        for name, child in module._modules.items()
    }
    return new
