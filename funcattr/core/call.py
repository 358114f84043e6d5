"""A ruled module's call site: what :meth:`funcattr.core.Rule.apply` receives as ``forward``.

``functionalize`` builds one :class:`ModuleCall` per ruled module in its private module tree
(:class:`funcattr.functional.LayerCall`). Calling it runs the module's ordinary forward; the
reference rule evaluates the module with modified parameters through :meth:`with_state`;
error messages name the module by :attr:`path`. Whatever the rule machinery derives for
this call site (the fast path's compiled plans, what it learnt about the call) lives in
:attr:`memo`, so it belongs to the tree, and thereby to ``functionalize``'s result: two
functionalized models, or two threads, never share it, and it is dropped with them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from funcattr.layer import InputVJP, find_input_vjp

__all__ = ["ModuleCall", "describe_arguments", "describe_value"]


class ModuleCall(ABC):
    """One ruled module's call site.

    Attributes
    ----------
    module : torch.nn.Module
        The module (in the private tree); its parameters are the ones of the current call.
    path : str
        The module's name in the model, as in ``model.named_modules()`` (``''``: the root).
    memo : dict
        State derived for this call site by the rule machinery; owned by the module tree.
    own_forward : bool
        Whether the module's forward is its own (an instance attribute, e.g. set by a
        canonizer) rather than its class's: then nothing known about the class applies.
    """

    module: nn.Module
    path: str
    memo: dict[Any, Any]
    own_forward: bool

    @abstractmethod
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The module's ordinary forward."""

    @abstractmethod
    def state(self) -> dict[str, Tensor]:
        """The module's own parameters and buffers as used in this call."""

    @abstractmethod
    def with_state(self, state: Mapping[str, Tensor], *args: Any, **kwargs: Any) -> Any:
        """The module's forward with its own parameters/buffers replaced by ``state``."""

    def input_vjp(self, args: tuple, kwargs: Mapping[str, Any]) -> InputVJP | None:
        """The registered closed-form input VJP of the call ``self(x, *args, **kwargs)``
        (:func:`funcattr.layer.find_input_vjp`), or ``None``."""
        return None if self.own_forward else find_input_vjp(self.module, args, kwargs)

    def where(self) -> str:
        """The module as error messages name it: its type and path, ``Conv2d 'features.3'``."""
        kind = type(self.module).__name__
        return f"{kind} '{self.path}'" if self.path else f"{kind} (the model itself)"


def describe_value(value: Any) -> str:
    """A value as error messages show it: tensors by their shape, ``Tensor(2, 5, 8)``; short
    reprs as they are."""
    if isinstance(value, Tensor):
        return f"Tensor{tuple(value.shape)}"
    if isinstance(value, tuple | list) and len(value) <= 4:
        inner = ", ".join(describe_value(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    text = repr(value)
    return text if len(text) <= 40 and "\n" not in text else f"{type(value).__name__}(...)"


def describe_arguments(args: tuple, kwargs: Mapping[str, Any]) -> str:
    """A call's arguments as error messages show them:
    ``(Tensor(2, 5, 8), Tensor(2, 5, 8), need_weights=False)``."""
    shown = [describe_value(value) for value in args]
    shown += [f"{key}={describe_value(value)}" for key, value in kwargs.items()]
    return f"({', '.join(shown)})"
