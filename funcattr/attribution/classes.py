"""Zennit-compatible stateful attributors: ``with Gradient(model, composite) as attributor``.

The classes keep Zennit's signatures (``attr_output``, ``create_graph``, ``retain_graph``,
``noise_level``, ``n_iter``, ``baseline_fn``, ``occlusion_fn``, ``window``, ``stride``) and
delegate to the pure functions. An attributor functionalizes its model once, on first use, and
keeps ``(fn, params)`` for later calls, inside or outside ``with``; it builds them again only
when the model changed in a way they depend on (a module replaced or switched between train and
eval mode, a parameter or buffer replaced) or the composite was replaced.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from funcattr.attribution.batched import integrated_gradients, smooth_grad
from funcattr.attribution.occlusion import occlude_independent, occlusion
from funcattr.attribution.options import (
    check_chunk_size,
    check_generator,
    check_n_iter,
    check_noise_level,
    check_window,
)
from funcattr.attribution.pullback import gradient
from funcattr.attribution.targets import AttrOutput, as_attr_output_fn
from funcattr.functional import FunctionalModel, functionalize
from funcattr.ruled import LiveModel

__all__ = ["Attributor", "Gradient", "IntegratedGradients", "Occlusion", "SmoothGrad"]


class _Fingerprint:
    """What ``functionalize(model, composite)``'s result depends on besides tensor values:
    the composite object, the module objects and their training flags, the parameter and
    buffer objects and their storage. It holds the objects (so that their ids cannot be reused)
    and compares them by identity."""

    def __init__(self, model: nn.Module, composite: Any) -> None:
        self.objects = (composite, *model.modules(), *model.parameters(), *model.buffers())
        self.states = tuple(module.training for module in model.modules()) + tuple(
            value.data_ptr() for value in (*model.parameters(), *model.buffers()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Fingerprint) and self.states == other.states and len(
            self.objects) == len(other.objects) and all(
            mine is theirs for mine, theirs in zip(self.objects, other.objects))

    __hash__ = None


class Attributor(ABC):
    """Base of the Zennit-style attributors: ``with Gradient(model, composite) as attributor``.

    Parameters
    ----------
    model : torch.nn.Module
        The model; never changed.
    composite : Composite, optional
        Rules to apply. While the attributor is active (inside ``with`` or a call),
        ``self.model`` is a rule-applied view of the model, so subclasses written for Zennit
        that call ``self.model`` get rule-modified gradients.
    attr_output : tensor or callable, optional
        Default output gradient (Zennit's name for ``attr_output_fn``, see
        :func:`gradient`); a call-time ``attr_output`` wins.
    """

    def __init__(self, model: nn.Module, composite=None, attr_output: AttrOutput = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"{type(self).__name__}(model={type(model).__name__}): expected a "
                f"torch.nn.Module, got {type(model).__name__}. Pass the model itself (for a pure "
                f"fn(params, x), call the pure functions such as gradient instead)."
            )
        self._model = model
        self.composite = composite
        self.attr_output_fn = as_attr_output_fn(attr_output, type(self).__name__, "attr_output")
        self._depth = 0
        self._built: tuple[_Fingerprint, FunctionalModel, dict[str, Tensor]] | None = None
        self._ruled: LiveModel | None = None

    # -- the functional state: built once, reused while the model is the same -------------
    def _functional(self) -> tuple[FunctionalModel, dict[str, Tensor]]:
        key = _Fingerprint(self._model, self.composite)
        if self._built is None or self._built[0] != key:
            fn, params = functionalize(self._model, self.composite)
            self._built, self._ruled = (key, fn, params), None
        return self._built[1], self._built[2]

    @property
    def model(self) -> nn.Module:
        """The rule-applied model while active, the original model otherwise."""
        if self._depth == 0 or self.composite is None:
            return self._model
        if self._ruled is None:
            self._ruled = LiveModel(self._model, self._active_state()[0])
        return self._ruled

    @model.setter
    def model(self, value: nn.Module) -> None:
        self._model = value

    @property
    def fn(self) -> Callable:
        """The functionalized model (built on entering the attributor)."""
        return self._active_state()[0]

    @property
    def params(self) -> dict[str, Tensor]:
        """The model's params dict for :attr:`fn`."""
        return self._active_state()[1]

    def _active_state(self) -> tuple[FunctionalModel, dict[str, Tensor]]:
        if self._depth == 0 or self._built is None:
            name = type(self).__name__
            raise RuntimeError(
                f"{name}: not active; use `with {name}(...) as attributor:` or call the "
                f"attributor."
            )
        return self._built[1], self._built[2]

    def __enter__(self) -> Attributor:
        if self._depth == 0:
            self._functional()
        self._depth += 1
        return self

    def __exit__(self, *exc_info) -> None:
        self._depth -= 1

    def __call__(self, input: Tensor, attr_output: AttrOutput = None) -> tuple[Tensor, Tensor]:
        """Attribute ``input``; returns ``(output, attribution)``."""
        attr_output_fn = (
            self.attr_output_fn if attr_output is None
            else as_attr_output_fn(attr_output, type(self).__name__, "attr_output")
        )
        with self:
            return self.forward(input, attr_output_fn)

    @abstractmethod
    def forward(self, input: Tensor, attr_output_fn: Callable[[Tensor], Tensor]):
        """Compute ``(output, attribution)``; override in subclasses."""


class Gradient(Attributor):
    """The (rule-modified) gradient, Zennit's ``Gradient``.

    Parameters
    ----------
    create_graph : bool
        Keep the graph so the attribution can be differentiated (input must require grad).
    retain_graph : bool, optional
        Accepted for Zennit compatibility; the pure pullback needs no retained graph.
    """

    def __init__(self, model, composite=None, attr_output=None, create_graph: bool = False,
                 retain_graph: bool | None = None) -> None:
        super().__init__(model, composite, attr_output)
        self.create_graph = create_graph
        self.retain_graph = retain_graph

    def _attribute(self, function: Callable, input: Tensor,
                   attr_output_fn: Callable[[Tensor], Tensor], **options: Any):
        """Call the pure ``function`` on the active ``(fn, params)``, honouring create_graph."""
        if isinstance(input, Tensor):  # anything else: the pure function names the mistake
            if not self.create_graph:
                input = input.detach()
            elif not input.requires_grad:
                input = input.detach().requires_grad_(True)
        with torch.set_grad_enabled(self.create_graph or torch.is_grad_enabled()):
            return function(self.fn, self.params, input, attr_output_fn, **options)

    def forward(self, input, attr_output_fn):
        return self._attribute(gradient, input, attr_output_fn)


class SmoothGrad(Gradient):
    """SmoothGrad, Zennit's ``SmoothGrad``, computed by :func:`smooth_grad` in one batch.

    Parameters
    ----------
    noise_level, n_iter
        As in :func:`smooth_grad`.
    generator : int, torch.Generator or None
        Keyword only. ``None`` (Zennit): torch's global generator; an int re-seeds on every
        call (the same noise each time); a generator advances from call to call.
    chunk_size : int, optional
        Keyword only; see :func:`smooth_grad`.
    """

    def __init__(self, model, composite=None, attr_output=None, create_graph: bool = False,
                 retain_graph: bool | None = None, noise_level: float = 0.1, n_iter: int = 20,
                 *, generator: int | torch.Generator | None = None,
                 chunk_size: int | None = None) -> None:
        super().__init__(model, composite, attr_output, create_graph, retain_graph)
        owner = type(self).__name__
        check_noise_level(noise_level, owner)
        check_n_iter(n_iter, owner)
        check_generator(generator, owner)
        check_chunk_size(chunk_size, owner)
        self.noise_level, self.n_iter = noise_level, n_iter
        self.generator, self.chunk_size = generator, chunk_size

    def forward(self, input, attr_output_fn):
        return self._attribute(smooth_grad, input, attr_output_fn, noise_level=self.noise_level,
                               n_iter=self.n_iter, generator=self.generator,
                               chunk_size=self.chunk_size)


class IntegratedGradients(Gradient):
    """Integrated Gradients, Zennit's ``IntegratedGradients``, by :func:`integrated_gradients`.

    The alphas are computed in the default dtype, as Zennit does, so results agree bit for bit.

    Parameters
    ----------
    baseline_fn, n_iter
        As in :func:`integrated_gradients`.
    chunk_size : int, optional
        Keyword only; see :func:`integrated_gradients`.
    """

    def __init__(self, model, composite=None, attr_output=None, create_graph: bool = False,
                 retain_graph: bool | None = None, baseline_fn: Any = None, n_iter: int = 20,
                 *, chunk_size: int | None = None) -> None:
        super().__init__(model, composite, attr_output, create_graph, retain_graph)
        owner = type(self).__name__
        check_n_iter(n_iter, owner)
        check_chunk_size(chunk_size, owner)
        self.baseline_fn = torch.zeros_like if baseline_fn is None else baseline_fn
        self.n_iter, self.chunk_size = n_iter, chunk_size

    def forward(self, input, attr_output_fn):
        return self._attribute(integrated_gradients, input, attr_output_fn,
                               baseline_fn=self.baseline_fn, n_iter=self.n_iter,
                               alpha_dtype=torch.get_default_dtype(), chunk_size=self.chunk_size)


class Occlusion(Attributor):
    """Occlusion, Zennit's ``Occlusion``, by :func:`occlusion` (all windows in one batch).

    A composite has no effect on the result (no gradient is taken).

    Parameters
    ----------
    occlusion_fn, window, stride
        As in :func:`occlusion`; ``window`` and ``stride`` must be an int or a tuple of ints.
    chunk_size : int, optional
        Keyword only; see :func:`occlusion`.
    """

    def __init__(self, model, composite=None, attr_output=None, occlusion_fn=None,
                 window: int | tuple[int, ...] = 8, stride: int | tuple[int, ...] = 8, *,
                 chunk_size: int | None = None) -> None:
        super().__init__(model, composite, attr_output)
        owner = type(self).__name__
        check_window(window, "window", owner)
        check_window(stride, "stride", owner)
        check_chunk_size(chunk_size, owner)
        if occlusion_fn is None:
            occlusion_fn = partial(occlude_independent, fill_fn=torch.zeros_like, invert=False)
        self.occlusion_fn, self.window, self.stride = occlusion_fn, window, stride
        self.chunk_size = chunk_size

    def forward(self, input, attr_output_fn):
        input = input.detach() if isinstance(input, Tensor) else input
        return occlusion(self.fn, self.params, input, attr_output_fn,
                         occlusion_fn=self.occlusion_fn, window=self.window, stride=self.stride,
                         chunk_size=self.chunk_size)
