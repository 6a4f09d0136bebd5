"""The shifted-sum depthwise backward computes the gradients the stock convolution computes."""

from __future__ import annotations

import copy
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn

from tunesmith.models.depthwise import (
    FastDepthwiseConv2d,
    FastDepthwiseConv2dSame,
    depthwise_weight_grad,
    sums_shifts,
    use_fast_depthwise,
)

# (channels, map size, kernel, stride, padding, dilation): the covered-map cases take the
# shifted sum, the others keep oneDNN's kernel; both must agree with the stock gradient.
SHAPES = [
    (8, 4, 5, 1, 2, 1),
    (8, 2, 5, 1, 2, 1),
    (6, 2, 3, 1, 1, 1),
    (6, 7, 5, 2, 2, 1),
    (4, 9, 3, 2, 0, 1),
    (4, 6, 3, 1, 2, 2),
    (5, 16, 3, 1, 1, 1),
]


@pytest.mark.parametrize(("channels", "size", "kernel", "stride", "padding", "dilation"), SHAPES)
def test_the_weight_gradient_by_shifted_sums_equals_the_stock_one(
    channels: int, size: int, kernel: int, stride: int, padding: int, dilation: int
) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, channels, size, size)
    weight = torch.randn(channels, 1, kernel, kernel, requires_grad=True)
    out = F.conv2d(x, weight, None, stride, padding, dilation, channels)
    grad = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, weight, grad)
    got = depthwise_weight_grad(
        x, grad, (kernel, kernel), (stride, stride), (padding, padding), (dilation, dilation)
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_shifted_sum_is_taken_only_where_the_kernel_covers_the_map() -> None:
    assert sums_shifts((4, 4), (5, 5)) and sums_shifts((2, 2), (3, 3))
    assert not sums_shifts((8, 8), (5, 5)) and not sums_shifts((4, 4), (3, 3))


def _pair(module: nn.Conv2d) -> tuple[nn.Conv2d, nn.Conv2d]:
    fast = copy.deepcopy(module)
    assert use_fast_depthwise(fast) == 1
    return module, fast


@pytest.mark.parametrize("same", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(("size", "stride"), [(4, 1), (2, 1), (7, 2), (12, 1)])
def test_a_patched_convolution_gives_the_stock_output_and_gradients(
    same: bool, bias: bool, size: int, stride: int
) -> None:
    torch.manual_seed(1)
    conv = (Conv2dSame(6, 6, 5, stride, groups=6, bias=bias) if same
            else nn.Conv2d(6, 6, 5, stride, 2, groups=6, bias=bias))
    stock, fast = _pair(conv)
    assert type(fast) is (FastDepthwiseConv2dSame if same else FastDepthwiseConv2d)
    x = torch.randn(4, 6, size, size).contiguous(memory_format=torch.channels_last)
    results = []
    for module in (stock, fast):
        inputs = x.clone().requires_grad_(True)
        out = module(inputs)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        results.append((out, inputs.grad, *(p.grad for p in module.parameters())))
    for expected, got in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_under_bf16_autocast_the_gradients_come_back_in_the_parameters_dtype() -> None:
    torch.manual_seed(2)
    stock, fast = _pair(nn.Conv2d(4, 4, 5, 1, 2, groups=4))
    x = torch.randn(2, 4, 4, 4)
    for module in (stock, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            module(x).float().square().sum().backward()
    for a, b in zip(stock.parameters(), fast.parameters(), strict=True):
        assert b.grad is not None and b.grad.dtype == torch.float32
        torch.testing.assert_close(b.grad, a.grad, rtol=2e-2, atol=2e-2)


def test_only_depthwise_convolutions_change_and_the_weights_stay_the_same() -> None:
    torch.manual_seed(3)
    network = nn.Sequential(
        nn.Conv2d(3, 8, 3),  # dense
        nn.Conv2d(8, 8, 3, groups=2),  # grouped, not depthwise
        nn.Conv2d(8, 8, 3, padding="same", groups=8),  # string padding: kept
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
    )
    keys = {k: v.clone() for k, v in network.state_dict().items()}
    assert use_fast_depthwise(network) == 1
    assert [type(m) for m in network] == [nn.Conv2d, nn.Conv2d, nn.Conv2d, FastDepthwiseConv2d]
    assert network.state_dict().keys() == keys.keys()
    restored = pickle.loads(pickle.dumps(network))
    x = torch.randn(2, 3, 9, 9)
    network.eval(), restored.eval()
    torch.testing.assert_close(restored(x), network(x), rtol=0, atol=0)


def test_efficientnet_gets_the_stock_gradients_with_the_fast_backward() -> None:
    torch.manual_seed(4)
    stock = timm.create_model("tf_efficientnet_lite0", num_classes=3)
    stock.to(memory_format=torch.channels_last)
    fast = copy.deepcopy(stock)
    assert use_fast_depthwise(fast) == 16  # all of Lite0's depthwise layers, 4 with SAME padding
    x, y = torch.randn(8, 3, 64, 64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for model in (stock, fast):
        F.cross_entropy(model(x), y).backward()
    compared = 0
    for (name, a), b in zip(stock.named_parameters(), fast.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        if a.grad.norm() > 1e-6:  # BN biases before a zero-initialized scale get ~0 gradients
            assert (b.grad - a.grad).norm() <= 1e-5 * a.grad.norm(), name
            compared += 1
    assert compared > 100
