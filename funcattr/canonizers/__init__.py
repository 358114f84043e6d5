"""Canonizers: pure transforms of (module tree, params) that make models LRP-friendly.

A canonizer never touches the model it is given. :meth:`Canonizer.apply` returns a *new
model view* (a shallow copy of the module tree with some modules replaced) and a *parameter
transform*, a pure function from the model's params dict to the view's params dict, applied
on every call of the functionalized model so that gradients flow to the original params.

Modules a canonizer does not change are shared between the model and its view (and are never
mutated); changed modules are shallow copies with their own registries; new tensors (merged
weights) are computed from the params on every call. Canonizing twice gives the same view
and params as canonizing once: a merged batch norm is an ``nn.Identity`` in the view, and
nothing is left to merge.

Zennit's canonizers are here under Zennit's names and arguments: :class:`MergeBatchNorm`,
:class:`SequentialMergeBatchNorm`, :class:`NamedMergeBatchNorm`, :class:`AttributeCanonizer`
and :class:`CompositeCanonizer`. :class:`TracedMergeBatchNorm` finds the pairs to merge in
the model's real data flow instead of in the order of its children. The canonizers for
torchvision models are in :mod:`funcattr.torchvision`; :data:`CANONIZERS` names them all,
and :func:`canonizers_for` picks the ones that fit a model.

The package: ``base`` (the protocol), ``view`` (copy-on-write view builder), ``batchnorm``
(merging), ``tracing`` (a thread-safe fx trace of the data flow), ``attributes``
(:class:`AttributeCanonizer`) and ``registry``.
"""

from funcattr.canonizers.attributes import AttributeCanonizer, AttributeMap
from funcattr.canonizers.base import (
    Canonizer,
    CompositeCanonizer,
    ParamTransform,
    as_canonizers,
    identity_transform,
)
from funcattr.canonizers.batchnorm import (
    MergeBatchNorm,
    NamedMergeBatchNorm,
    SequentialMergeBatchNorm,
    TracedMergeBatchNorm,
)
from funcattr.canonizers.registry import (
    CANONIZERS,
    CanonizerSpec,
    canonizers_for,
    find_canonizer,
    get_canonizer,
    register_canonizer,
)
from funcattr.canonizers.view import ViewBuilder

__all__ = [
    "CANONIZERS",
    "AttributeCanonizer",
    "AttributeMap",
    "Canonizer",
    "CanonizerSpec",
    "CompositeCanonizer",
    "MergeBatchNorm",
    "NamedMergeBatchNorm",
    "ParamTransform",
    "SequentialMergeBatchNorm",
    "TracedMergeBatchNorm",
    "ViewBuilder",
    "as_canonizers",
    "canonizers_for",
    "find_canonizer",
    "get_canonizer",
    "identity_transform",
    "register_canonizer",
]
