"""Shared fixtures: float64 by default, seeded generators with hex ids."""

import pytest
import torch

SEEDS = [0xDEADBEEF, 0xC0FFEE]
EXTENDED_SEEDS = [0x1234, 0xBEEF, 0xFACE, 0xD00D]


@pytest.fixture(autouse=True)
def _float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(
    params=SEEDS + [pytest.param(s, marks=pytest.mark.extended) for s in EXTENDED_SEEDS],
    ids=lambda seed: hex(seed),
)
def seed(request) -> int:
    return request.param


@pytest.fixture
def rng(seed) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
