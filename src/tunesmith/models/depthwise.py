"""A faster CPU backward for depthwise convolutions whose kernel covers their whole feature map.

oneDNN's depthwise weight-gradient kernel is slow when most kernel taps land in padding: on a
2-core CPU, at batch 64, a 5x5 depthwise convolution over 672 channels of a 4x4 map takes 41 ms for
its weight gradient against 1.2 ms for its forward pass, and EfficientNet's late stages (5x5 on 4x4
and 2x2 maps at 64 px input, 7x7 at 224 px) spend most of a training step there. Summing the
k*k shifted products of input and output gradient computes the same gradient in 6.8 ms. Where the
output map is larger than the kernel's area the stock kernel is as fast or faster, so it keeps
those layers, the input gradient and every other device.

`use_fast_depthwise(network)` gives a network's depthwise convolutions this backward in place;
parameters, state-dict keys, the forward result and every gradient stay what they were (to float
rounding).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.padding import pad_same
from torch import nn

Pair = tuple[int, int]


def sums_shifts(output_size: Pair, kernel_size: Pair) -> bool:
    """Whether the shifted-sum weight gradient beats oneDNN's here: when the kernel's area is at
    least the output map's (measured on EfficientNet-Lite0's layers at 64 px; see the docstring)."""
    return output_size[0] * output_size[1] <= kernel_size[0] * kernel_size[1]


def _overlap(size: int, out_size: int, tap: int, stride: int, pad: int) -> tuple[slice, slice]:
    """The output positions along one axis whose input, for this kernel tap, lies inside the
    map (not in the padding), and those inputs."""
    first = max(0, -(-(pad - tap) // stride))
    last = min(out_size, (size - 1 + pad - tap) // stride + 1)
    if last <= first:
        return slice(0, 0), slice(0, 0)
    start = first * stride + tap - pad
    return slice(start, start + stride * (last - first - 1) + 1, stride), slice(first, last)


def depthwise_weight_grad(
    x: torch.Tensor, grad: torch.Tensor, kernel_size: Pair, stride: Pair, padding: Pair,
    dilation: Pair,
) -> torch.Tensor:
    """d loss / d weight of a depthwise convolution, as shape (C, 1, kh, kw): for each kernel tap,
    the sum over batch and positions of the input it reads times the output gradient. Taps that
    read padding add nothing, so only the overlap of each shifted map is multiplied."""
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    (height, width), (out_h, out_w) = x.shape[-2:], grad.shape[-2:]
    taps = x.new_zeros(x.shape[1], kh, kw)
    for i in range(kh):
        rows_in, rows_out = _overlap(height, out_h, i * dh, sh, padding[0])
        for j in range(kw):
            cols_in, cols_out = _overlap(width, out_w, j * dw, sw, padding[1])
            if rows_out.stop > rows_out.start and cols_out.stop > cols_out.start:
                taps[:, i, j] = (x[:, :, rows_in, cols_in]
                                 * grad[:, :, rows_out, cols_out]).sum((0, 2, 3))
    return taps.unsqueeze(1)


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
        stride: Pair, padding: Pair, dilation: Pair,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.settings = (stride, padding, dilation, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, has_bias = ctx.settings
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        kernel_size = (weight.shape[-2], weight.shape[-1])
        shifted = need_weight and sums_shifts((grad.shape[-2], grad.shape[-1]), kernel_size)
        # Under autocast the convolution ran in the gradient's dtype; so does its backward, and
        # each gradient goes back in its input's dtype.
        xc, wc = x.to(grad.dtype), weight.to(grad.dtype)
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad, xc, wc, [weight.shape[0]] if has_bias else None, list(stride), list(padding),
            list(dilation), False, [0, 0], x.shape[1],
            [need_x, need_weight and not shifted, has_bias and need_bias],
        )
        if shifted:
            grad_weight = depthwise_weight_grad(xc, grad, kernel_size, stride, padding, dilation)
        return (
            None if grad_x is None else grad_x.to(x.dtype),
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(weight.dtype),
            None, None, None,
        )


def _takes_custom_backward(module: nn.Conv2d, x: torch.Tensor) -> bool:
    """Training on CPU in eager mode; tracing, export and compilation see the stock convolution."""
    return (
        module.training
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
        and not torch.jit.is_tracing()  # type: ignore[attr-defined, no-untyped-call]
        and not torch.compiler.is_compiling()
        and not torch.onnx.is_in_onnx_export()
    )


class FastDepthwiseConv2d(nn.Conv2d):
    """An `nn.Conv2d` (groups == channels, numeric zero padding) with the shifted-sum backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _takes_custom_backward(self, x):
            return super().forward(x)
        return _DepthwiseConv.apply(  # type: ignore[no-any-return]
            x, self.weight, self.bias, self.stride, self.padding, self.dilation
        )


class FastDepthwiseConv2dSame(Conv2dSame):
    """timm's TensorFlow-style 'SAME' convolution (padded by input size) with that backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _takes_custom_backward(self, x):
            return super().forward(x)  # type: ignore[no-any-return, no-untyped-call]
        x = pad_same(x, list(self.weight.shape[-2:]), list(self.stride), list(self.dilation))
        return _DepthwiseConv.apply(  # type: ignore[no-any-return]
            x, self.weight, self.bias, self.stride, (0, 0), self.dilation
        )


def is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.in_channels > 1
        and module.groups == module.in_channels == module.out_channels
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def use_fast_depthwise(network: nn.Module) -> int:
    """Give `network`'s depthwise convolutions the faster backward, in place (their class changes
    to a subclass that only overrides `forward`, as `torch.nn.utils.parametrize` does); returns
    how many. Subclasses other than timm's Conv2dSame keep their own forward."""
    fast = {nn.Conv2d: FastDepthwiseConv2d, Conv2dSame: FastDepthwiseConv2dSame}
    count = 0
    for module in network.modules():
        if not is_depthwise(module):
            continue
        if type(module) in fast:
            module.__class__ = fast[type(module)]
            count += 1
    return count
