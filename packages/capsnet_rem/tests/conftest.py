"""Fixtures shared by the capsnet_rem tests."""

import pytest
import torch
from capsnet_rem.model import CapsNet


@pytest.fixture
def small_capsnet():
    """Factory for a seeded CapsNet on 20x20 inputs, small enough for float64 checks; keywords override."""

    def make(**overrides) -> CapsNet:
        torch.manual_seed(0)
        kwargs = dict(
            in_shape=(1, 20, 20),
            conv_channels=8,
            conv_kernel=5,
            primary_types=6,
            primary_dims=4,
            primary_kernel=5,
            primary_stride=2,
            class_dims=6,
        )
        return CapsNet(**{**kwargs, **overrides})

    return make
