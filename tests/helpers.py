"""Shared test helpers: tolerant comparison, the two oracles, model snapshots, small models.

``assert_close`` compares relative to the largest magnitude of the expected tensor (LRP
relevances can have tiny entries beside large ones); ``zennit_gradient`` runs the reference
library with plain autograd, ``funcattr_gradient`` runs ``functionalize`` + ``gradient``;
``jacobian_matrix`` turns a linear layer into its matrix for the matrix-form replicas.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import funcattr

__all__ = [
    "assert_close",
    "assert_unchanged",
    "funcattr_gradient",
    "jacobian_matrix",
    "single_thread",
    "small_cnn",
    "small_mlp",
    "snapshot",
    "stabilized",
    "zennit_gradient",
]


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread while a module's tiny-tensor tests run, then restore the setting.

    On a loaded 2-core machine, OpenMP barriers between two threads cost ~20 ms per small
    convolution (measured: 24 ms with 2 threads vs 15 us with 1), which dominates these tests.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def assert_close(actual: Tensor, expected: Tensor, *, rtol: float = 1e-10,
                 atol: float | None = None, msg: str | None = None) -> None:
    """``|actual - expected| <= atol + rtol |expected|`` elementwise, shapes and dtypes equal.

    ``atol`` defaults to ``rtol`` times the largest magnitude of ``expected``, so that entries
    far below the scale of the result are compared at the result's scale.
    """
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    assert bool(torch.isfinite(expected).all()), f"{msg or ''}: the expected tensor is not finite"
    if atol is None:
        scale = expected.abs().max().item() if expected.numel() else 0.0
        atol = rtol * max(scale, 1e-300)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol,
                               msg=None if msg is None else lambda text: f"{msg}: {text}")


def stabilized(z: Tensor, epsilon: float = 1e-6) -> Tensor:
    """Zennit's default stabilizer written out: ``z + eps * sign0(z)``."""
    return z + epsilon * torch.where(z < 0, -1.0, 1.0)


def zennit_gradient(model: nn.Module, composite: Any, input: Tensor,
                    grad_output: Tensor | Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """Zennit's ``(output, relevance)``: register ``composite`` and take a plain autograd grad.

    ``grad_output`` is a tensor or a function of the output (e.g. one-hot times output).
    """
    leaf = input.detach().clone().requires_grad_(True)
    with composite.context(model) as modified:
        output = modified(leaf)
        seed = grad_output(output.detach()) if callable(grad_output) else grad_output
        (relevance,) = torch.autograd.grad(output, leaf, seed)
    return output.detach(), relevance


def funcattr_gradient(model: nn.Module, composite: Any, input: Tensor,
                      grad_output: Tensor | Callable[[Tensor], Tensor],
                      canonizers: Any = None) -> tuple[Tensor, Tensor]:
    """funcattr's ``(output, relevance)`` through ``functionalize`` and ``gradient``."""
    fn, params = funcattr.functionalize(model, composite, canonizers)
    return funcattr.gradient(fn, params, input, grad_output)


def jacobian_matrix(layer: Callable[[Tensor], Tensor], shape: tuple[int, ...]) -> Tensor:
    """The matrix ``M`` of a linear map on one sample: ``layer(u).flatten() == M @ u.flatten()``.

    ``shape`` is the shape of one input sample (without the batch dimension).
    """
    numel = 1
    for size in shape:
        numel *= size
    basis = torch.eye(numel).reshape(numel, *shape)
    columns = layer(basis).reshape(numel, -1)  # row i is layer(e_i)
    return columns.T.contiguous()


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything ``functionalize`` must leave alone: values, storage, hooks, modes, forwards."""
    modules = dict(model.named_modules(remove_duplicate=False))
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "ptrs": {k: v.data_ptr() for k, v in model.state_dict(keep_vars=True).items()},
        "objects": {k: id(v) for k, v in model.state_dict(keep_vars=True).items()},
        "hooks": {
            name: tuple(len(getattr(m, attr)) for attr in (
                "_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks",
            ))
            for name, m in modules.items()
        },
        "training": {name: m.training for name, m in modules.items()},
        "forward": {name: m.__dict__.get("forward") for name, m in modules.items()},
        "children": {name: tuple(m._modules) for name, m in modules.items()},
        "requires_grad": {k: v.requires_grad for k, v in model.named_parameters()},
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    """Assert that ``model`` matches its ``snapshot``: exact values and the same tensors."""
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"
    for key in ("ptrs", "objects", "hooks", "training", "forward", "children", "requires_grad"):
        assert after[key] == before[key], f"{key} changed: {before[key]} -> {after[key]}"


class SmallCNN(nn.Module):
    """Conv, ReLU, BatchNorm, AvgPool, Conv, ReLU, MaxPool, Linear, ReLU, Linear."""

    def __init__(self, bias: bool = True, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=bias),
            nn.ReLU(),
            nn.BatchNorm2d(4),
            nn.AvgPool2d(2),
            nn.Conv2d(4, 5, 3, padding=1, bias=bias),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(5 * 2 * 2, 6, bias=bias),
            nn.ReLU(),
            nn.Linear(6, classes, bias=bias),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class ViewsItsInput(nn.Module):
    """An old-style model that ``.view``s its image input (fails on channels-last strides)."""

    def __init__(self, image_shape: tuple[int, int, int] = (3, 6, 6), classes: int = 5) -> None:
        super().__init__()
        self.linear = nn.Linear(image_shape[0] * image_shape[1] * image_shape[2], classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.view(x.shape[0], -1))


def _randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                module.running_mean.normal_(0.0, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                if module.weight is not None:
                    module.weight.normal_(1.0, 0.3, generator=generator)
                    module.bias.normal_(0.0, 0.3, generator=generator)


def small_cnn(seed: int = 0, bias: bool = True, classes: int = 4) -> nn.Module:
    """A small CNN in eval mode for inputs ``(batch, 3, 8, 8)``, randomised BatchNorm."""
    torch.manual_seed(seed)
    model = SmallCNN(bias=bias, classes=classes)
    _randomise_batchnorm(model, torch.Generator().manual_seed(seed))
    return model.eval()


def small_mlp(seed: int = 0, bias: bool = True, sizes: tuple[int, ...] = (6, 8, 5, 3)
              ) -> nn.Module:
    """A small ReLU MLP (``nn.Sequential`` of Linear/ReLU) in eval mode."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for index, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b, bias=bias))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()
