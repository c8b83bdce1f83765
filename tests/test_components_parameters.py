"""Component parameters: one float64 draw per seed whatever the dtype, zeros without a generator, and the config protocol."""

from __future__ import annotations

import math

import pytest
import torch

from physlens.models.components import ComponentConfig, init_weight, zeros_parameter
from physlens.models.transformer_config import TransformerConfig


def test_a_float32_weight_is_the_float64_draw_rounded(seed: int) -> None:
    wide = init_weight((50, 40), 40, torch.Generator().manual_seed(seed), TransformerConfig(dtype="float64"))
    narrow = init_weight((50, 40), 40, torch.Generator().manual_seed(seed), TransformerConfig(dtype="float32"))
    assert wide.dtype == torch.float64 and narrow.dtype == torch.float32
    torch.testing.assert_close(narrow.detach(), wide.detach().float(), rtol=0, atol=0)
    # N(0, 1/fan_in): 2000 draws put the sample std within a few percent of 1/√40
    assert float(wide.detach().std()) == pytest.approx(1 / math.sqrt(40), rel=0.05)


def test_no_generator_means_zeros() -> None:
    cfg = TransformerConfig(dtype="float64")
    for parameter in (init_weight((3, 4), 3, None, cfg), zeros_parameter((3, 4), cfg)):
        assert isinstance(parameter, torch.nn.Parameter) and parameter.shape == (3, 4) and not bool(parameter.any())


def test_the_model_configs_provide_what_components_read() -> None:
    from physlens.models.planted import PlantedConfig

    assert isinstance(TransformerConfig(), ComponentConfig)
    assert isinstance(PlantedConfig(), ComponentConfig)
    assert not isinstance(object(), ComponentConfig)
