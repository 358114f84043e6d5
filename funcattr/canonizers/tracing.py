"""A symbolic trace of a model's data flow that touches no global state.

``torch.fx.symbolic_trace`` patches ``torch.nn.Module.__call__`` and ``__getattr__`` (and
functions in module globals) for the whole process while it traces: a model run by another
thread at that moment goes through the tracer and fails. :func:`trace` records the same
graph on a private copy of the module tree instead: each copied module's own ``forward`` is
routed through the tracer and each parameter of a traced-through module is shadowed by a
proxy in the copy's instance dict, so nothing outside the copy changes. Hooks are not traced
(fx does not run a leaf module's hooks either), and functions that fx wraps by patching
module globals (``math.*``, ``torch.fx.wrap``) run on the proxies as they are, so a model
whose control flow depends on them (torchvision's Swin) is reported as untraceable.
"""

from __future__ import annotations

import collections
import inspect
from collections.abc import Callable
from typing import Any

import torch.fx
from torch import nn

from funcattr.module_tree import clone_tree

__all__ = ["trace"]

_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
          "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
          "_backward_pre_hooks")


class _Tracer(torch.fx.Tracer):
    """An fx tracer whose leaves are torch's own modules plus ``leaf_types``."""

    def __init__(self, root: nn.Module, leaf_types: tuple[type, ...]) -> None:
        super().__init__()
        self.leaf_types = leaf_types
        self.root = root
        self.graph = torch.fx.Graph(tracer_cls=type(self))
        self.tensor_attrs: dict[Any, str] = {}
        self.submodule_paths = {module: name for name, module in root.named_modules()}
        self._qualname_counter = collections.defaultdict(int)  # fx's is class-wide

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, self.leaf_types) or super().is_leaf_module(
            module, qualified_name)


class _Routed:
    """A copied module's ``forward``: the call goes to the tracer (a node or traced through)."""

    def __init__(self, tracer: _Tracer, module: nn.Module, forward: Callable[..., Any]) -> None:
        self.tracer, self.module, self.forward = tracer, module, forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.tracer.call_module(self.module, self.forward, args, kwargs)


def _placeholders(tracer: _Tracer, forward: Callable[..., Any]) -> tuple[list, dict]:
    """Proxies for the root's inputs; arguments with a default keep it (as fx does)."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, parameter in inspect.signature(forward).parameters.items():
        if parameter.kind is parameter.VAR_KEYWORD:
            continue
        if parameter.default is not parameter.empty:
            value = parameter.default
        else:
            value = tracer.create_proxy("placeholder", name, (), {})
        if parameter.kind is parameter.KEYWORD_ONLY:
            kwargs[name] = value
        else:
            args.append(value)
    return args, kwargs


def trace(model: nn.Module, leaf_types: tuple[type, ...]) -> torch.fx.Graph:
    """The fx graph of ``model``'s forward, with ``leaf_types`` (and torch.nn's) as leaves.

    Node targets of ``call_module`` nodes are names in ``model.named_modules()``. The model and
    every other object outside a private copy of its module tree stay untouched, so other
    threads may run any model meanwhile.

    Raises
    ------
    Exception
        Whatever the forward raises on proxies (``torch.fx.proxy.TraceError`` for control
        flow on tensor values); callers turn it into their own message.
    """
    root = clone_tree(model)
    tracer = _Tracer(root, leaf_types)
    forward = root.forward
    args, kwargs = _placeholders(tracer, forward)
    for prefix, module in root.named_modules():
        state = module.__dict__
        for name in _HOOKS:
            if name in state:
                state[name] = type(state[name])()
        if module is not root:
            state["forward"] = _Routed(tracer, module, module.forward)
        if module is root or not tracer.is_leaf_module(module, prefix):
            # what fx's patched Module.__getattr__ gives: a parameter read in a traced forward
            # is a proxy (an instance attribute of the copy shadows the registry entry)
            for name, parameter in module._parameters.items():
                if parameter is not None:
                    qualified = f"{prefix}.{name}" if prefix else name
                    state[name] = tracer.create_proxy("get_attr", qualified, (), {})
    output = forward(*args, **kwargs)  # the root is traced through, as fx does
    tracer.create_node("output", "output", (tracer.create_arg(output),), {})
    return tracer.graph
