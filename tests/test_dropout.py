"""The CPU dropout whose mask comes from 15-bit slices of 64-bit draws: the same rate, an
unbiased scale, independent elements, the gradient of its own mask, seeded, and the stock module
wherever it does not train on a CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tunesmith.models.dropout import LEVELS, FastDropout, keep_mask, use_fast_dropout

ROWS = 400_000


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_every_slice_of_a_draw_keeps_at_the_asked_rate(p: float) -> None:
    torch.manual_seed(0)
    keep, scale = keep_mask(torch.Size([ROWS, 4]), p)
    # Column j holds the j-th 16-bit slice of each 64-bit draw; the top one has no sign bit, so
    # comparing without masking it would keep it at another rate than the others.
    rates = keep.float().mean(0)
    sigma = math.sqrt(p * (1 - p) / ROWS)
    assert torch.all((rates - (1 - p)).abs() < 5 * sigma), rates
    threshold = round(p * LEVELS)
    assert scale == pytest.approx(LEVELS / (LEVELS - threshold))


def test_neighbouring_elements_are_independent() -> None:
    torch.manual_seed(1)
    keep, _ = keep_mask(torch.Size([ROWS * 4]), 0.5)
    bits = keep.float() - 0.5
    for lag in (1, 2, 3, 4, 5):
        correlation = float((bits[:-lag] * bits[lag:]).mean() / 0.25)
        assert abs(correlation) < 5 / math.sqrt(ROWS * 4), (lag, correlation)


def test_output_keeps_the_expectation_and_the_gradient_is_its_mask() -> None:
    torch.manual_seed(2)
    dropout = FastDropout(0.2).train()
    x = torch.randn(1000, 384, requires_grad=True)
    out = dropout(x)
    kept = out != 0
    _, scale = keep_mask(torch.Size([1]), 0.2)
    assert torch.allclose(out[kept], x.detach()[kept] * scale)
    assert abs(float(kept.float().mean()) - 0.8) < 0.005
    assert float(dropout(torch.ones(2000, 500)).mean()) == pytest.approx(1.0, abs=0.005)

    weights = torch.randn_like(x)
    (out * weights).sum().backward()
    assert x.grad is not None
    assert torch.allclose(x.grad, weights * kept * scale)


def test_the_mask_follows_torch_seed() -> None:
    dropout = FastDropout(0.1).train()
    x = torch.ones(64, 64)
    torch.manual_seed(3)
    first = dropout(x)
    torch.manual_seed(3)
    again = dropout(x)
    other = dropout(x)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_networks_get_it_in_place_and_it_stands_aside_outside_cpu_training() -> None:
    network = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.3), nn.Sequential(nn.Dropout(0.1)))
    before = {name: tensor.clone() for name, tensor in network.state_dict().items()}
    assert use_fast_dropout(network) == 2
    assert all(type(module) is FastDropout for module in (network[1], network[2][0]))
    assert network[1].p == 0.3
    assert network.state_dict().keys() == before.keys()

    x = torch.randn(16, 8)
    network.eval()
    assert torch.equal(network(x), network[0](x))  # evaluation: no dropout
    network.train()
    traced = torch.jit.trace(network, x, check_trace=False)
    graph = str(traced.graph)
    assert "dropout" in graph and "random_" not in graph  # tracing sees the stock dropout
