"""The core helpers: ``stabilize``/``Stabilizer`` (Zennit's table) and ``expand`` (ZBox bounds)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import zennit.core as zcore

from funcattr.core import Stabilizer, expand, stabilize

EPS = 1e-6


def _signed_zeros() -> torch.Tensor:
    return torch.tensor([0.0, -0.0, 1.0, -1.0])


def test_stabilize_default_table() -> None:
    """Zennit's table: sign0(0) = sign0(-0.0) = +1."""
    expected = torch.tensor([EPS, EPS, 1.0 + EPS, -1.0 - EPS])
    assert torch.equal(stabilize(_signed_zeros(), EPS), expected)
    assert torch.equal(Stabilizer(epsilon=EPS)(_signed_zeros()), expected)


def test_stabilize_clip_table() -> None:
    expected = torch.tensor([EPS, EPS, 1.0, -1.0])
    assert torch.equal(stabilize(_signed_zeros(), EPS, clip=True), expected)
    assert torch.equal(stabilize(torch.tensor([1e-9, -1e-9]), EPS, clip=True),
                       torch.tensor([EPS, -EPS]))


def test_stabilize_norm_scale_with_dim() -> None:
    z = torch.tensor([0.0, -0.0, 2.0, -2.0])
    scaled = EPS * math.sqrt(2.0)  # the root mean square of z over dim 0
    expected = torch.tensor([scaled, scaled, 2.0 + scaled, -2.0 - scaled])
    torch.testing.assert_close(stabilize(z, EPS, norm_scale=True, dim=(0,)), expected,
                               rtol=0.0, atol=1e-15)
    torch.testing.assert_close(Stabilizer(EPS, norm_scale=True, dim=(0,))(z), expected,
                               rtol=0.0, atol=1e-15)


def test_stabilize_norm_scale_default_dims_are_per_sample(rng: torch.Generator) -> None:
    z = torch.randn(3, 4, 5, generator=rng)
    rms = (z**2).mean(dim=(1, 2), keepdim=True).sqrt()
    expected = z + torch.where(z < 0, -1.0, 1.0) * 0.1 * rms
    torch.testing.assert_close(stabilize(z, 0.1, norm_scale=True), expected, rtol=1e-14,
                               atol=1e-15)


@pytest.mark.parametrize(("clip", "norm_scale", "dim"), [
    (False, False, None), (True, False, None), (False, True, None), (True, True, None),
    (False, True, (1,)), (True, True, (0, 1)),
])
def test_stabilize_equals_zennit(rng: torch.Generator, clip: bool, norm_scale: bool,
                                 dim: tuple[int, ...] | None) -> None:
    z = torch.randn(4, 6, generator=rng) * torch.logspace(-8, 1, 6)
    z[0, 0], z[1, 1] = 0.0, -0.0
    ours = stabilize(z, 1e-3, clip=clip, norm_scale=norm_scale, dim=dim)
    theirs = zcore.stabilize(z, 1e-3, clip=clip, norm_scale=norm_scale, dim=dim)
    torch.testing.assert_close(ours, theirs, rtol=1e-15, atol=0.0)


def test_stabilize_never_returns_zero() -> None:
    z = torch.tensor([0.0, -0.0, 1e-30, -1e-30])
    assert bool((stabilize(z, EPS) != 0).all())
    assert bool((stabilize(z, EPS, clip=True) != 0).all())


def test_stabilize_keeps_dtype() -> None:
    for dtype in (torch.float32, torch.float64):
        assert stabilize(_signed_zeros().to(dtype), EPS).dtype == dtype
        assert stabilize(_signed_zeros().to(dtype), EPS, clip=True).dtype == dtype


def test_stabilizer_is_a_value() -> None:
    assert Stabilizer() == Stabilizer(epsilon=1e-6, clip=False, norm_scale=False, dim=None)
    assert hash(Stabilizer(0.1)) == hash(Stabilizer(epsilon=0.1))
    assert Stabilizer(0.1) != Stabilizer(0.1, clip=True)
    assert repr(Stabilizer()) == "Stabilizer(epsilon=1e-06, clip=False, norm_scale=False, dim=None)"


def test_stabilizer_ensure_accepts_numbers_and_callables() -> None:
    assert Stabilizer.ensure(0.5) == Stabilizer(epsilon=0.5)
    converted = Stabilizer.ensure(2)
    assert converted == Stabilizer(epsilon=2.0) and isinstance(converted.epsilon, float)
    custom = Stabilizer(1e-3, clip=True)
    assert Stabilizer.ensure(custom) is custom

    def function(z: torch.Tensor) -> torch.Tensor:
        return z + 1.0

    assert Stabilizer.ensure(function) is function


@pytest.mark.parametrize(("value", "error", "match"), [
    (True, TypeError, r"Stabilizer.ensure\(value=True\): expected a float or a callable, got bool"),
    ("1e-6", TypeError, r"Stabilizer.ensure\(value='1e-6'\): expected a float or a callable "
     r"z -> stabilised z, got str. Pass e.g. value=1e-6"),
    (None, TypeError, r"got NoneType"),
    (math.nan, ValueError, r"Stabilizer.ensure\(value=nan\): expected a finite number"),
    (-math.inf, ValueError, r"expected a finite number, got -inf"),
])
def test_stabilizer_ensure_rejects(value: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Stabilizer.ensure(value)


def test_stabilizer_ensure_names_its_owner() -> None:
    with pytest.raises(TypeError, match=r"ZPlus\(stabilizer='x'\)"):
        Stabilizer.ensure("x", owner="ZPlus", name="stabilizer")


@pytest.mark.parametrize(("value", "shape", "cut", "expected_shape"), [
    (3.0, (2, 3, 4, 4), False, (2, 3, 4, 4)),
    (torch.tensor(-1.0), (2, 3), False, (2, 3)),
    (torch.zeros(1, 3, 1, 1), (2, 3, 4, 4), False, (2, 3, 4, 4)),
    (torch.zeros(2, 3, 4, 4), (2, 3, 4, 4), False, (2, 3, 4, 4)),
    (torch.zeros(8, 3, 4, 4), (2, 3, 4, 4), True, (2, 3, 4, 4)),
    (torch.zeros(1, 3), (2, 3, 4, 4), False, (2, 3, 4, 4)),  # trailing singletons appended
    (torch.zeros(2), (2, 3, 4), False, (2, 3, 4)),
])
def test_expand_shapes(value, shape, cut, expected_shape) -> None:
    assert tuple(expand(value, shape, cut_batch_dim=cut).shape) == expected_shape


def test_expand_keeps_values_and_cuts_the_batch() -> None:
    value = torch.arange(8.0).reshape(8, 1, 1, 1).expand(8, 3, 2, 2)
    result = expand(value, (2, 3, 2, 2), cut_batch_dim=True)
    assert torch.equal(result, value[:2])
    per_channel = torch.tensor([-1.0, -2.0, -3.0]).reshape(1, 3, 1, 1)
    result = expand(per_channel, (2, 3, 2, 2))
    assert torch.equal(result[1, 2], torch.full((2, 2), -3.0))


@pytest.mark.parametrize("value", [
    torch.zeros(3),  # (3,) does not fit a batch of 2 as leading dimensions: Zennit fails too
    torch.zeros(3, 1, 1),
    torch.zeros(1, 4, 1, 1),
    torch.zeros(8, 3, 4, 4),  # a larger batch without cut_batch_dim
    torch.zeros(1, 1, 1, 1, 1),
], ids=["(3,)", "(3,1,1)", "(1,4,1,1)", "(8,3,4,4)", "5d"])
def test_expand_errors(value: torch.Tensor) -> None:
    shape = (2, 3, 4, 4)
    with pytest.raises(ValueError, match=re.escape(f"expand(value of shape {tuple(value.shape)})")
                       + r": cannot broadcast to the input shape \(2, 3, 4, 4\)\. Give a scalar"):
        expand(value, shape)
    with pytest.raises(RuntimeError, match="Invalid shape"):  # the reference agrees
        zcore.expand(value, shape)
