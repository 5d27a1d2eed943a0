"""OFA's image stem: a ResNet cut after stage 3 (stride 16, 1024 channels), with drop-path.

Parameter names and shapes follow OFA's checkpoints (``encoder.embed_images.*``). OFA's
``resnet18``/``resnet34`` are Bottleneck networks too ([2, 2, 2] and [3, 4, 6] blocks).

Training on CPU, each BatchNorm followed by a ReLU runs fused with what reads the ReLU's output (the next
convolution, or the stem's max-pool): :class:`BatchNormReLUConv` and :class:`BatchNormReLUMaxPool` keep the
BatchNorm's input alone for backward and recompute the ReLU's output there (one multiply-add per element),
where autograd would keep both, a tensor of the convolution's input size twice. That is two of a
Bottleneck's seven activations (about 400 MB for ofa_base at 480 px, batch 4); outputs are the modules' own
(the same kernels run), gradients theirs up to the recomputation's rounding.
"""
from functools import partial
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BLOCKS = {
    "resnet18": (2, 2, 2),
    "resnet34": (3, 4, 6),
    "resnet50": (3, 4, 6),
    "resnet101": (3, 4, 23),
    "resnet152": (3, 8, 36),
}


def drop_path_rates(last: float, count: int) -> List[float]:
    """Rates rising linearly from 0 to ``last`` over ``count`` blocks (plain floats: works on the meta device)."""
    return [last * i / (count - 1) if count > 1 else 0.0 for i in range(count)]


def drop_path(x: Tensor, rate: float, training: bool, batch_dim: int = 0) -> Tensor:
    """Stochastic depth: zero a residual branch for a random subset of samples, rescale the rest."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    shape = [1] * x.dim()
    shape[batch_dim] = x.size(batch_dim)
    mask = torch.rand(shape, dtype=x.dtype, device=x.device).add_(keep).floor_()
    return x.div(keep) * mask


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all buffers (``--freeze-resnet``)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((channels,), value))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def norm_layer(freeze: bool = False, sync: bool = False) -> Callable[[int], nn.Module]:
    if sync:
        return partial(nn.SyncBatchNorm, eps=1e-3)  # OFA's --sync-bn uses eps 1e-3
    return FrozenBatchNorm2d if freeze else nn.BatchNorm2d


def fusable(norm: nn.Module, x: Tensor) -> bool:
    """Whether ``norm`` can run inside the fused BatchNorm-ReLU functions: a plain ``nn.BatchNorm2d`` updating its
    statistics, on CPU, with gradients on (frozen, synchronised or evaluating BatchNorms run as modules; so does
    CUDA, whose cuDNN batch norm these functions would bypass)."""
    return (type(norm) is nn.BatchNorm2d and norm.training and norm.track_running_stats and norm.affine
            and x.device.type == "cpu" and torch.is_grad_enabled())


class _BatchNormReLU:
    """The shared halves: ``relu(batch_norm(x))`` in training mode, its recomputation and its backward."""

    @staticmethod
    def normalize(norm: nn.BatchNorm2d, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``relu(batch_norm(x))`` as ``norm(x)`` computes it (same kernel, running statistics and batch count
        updated); returns it with the batch mean and inverse standard deviation."""
        norm.num_batches_tracked.add_(1)
        momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
        out, mean, invstd = torch.native_batch_norm(x, norm.weight, norm.bias, norm.running_mean,
                                                    norm.running_var, True, momentum, norm.eps)
        return out.relu_(), mean, invstd

    @staticmethod
    def recompute(x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, invstd: Tensor) -> Tensor:
        scale = invstd * weight
        shift = bias - mean * scale
        return (x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).relu_()

    @staticmethod
    def backward_through(ctx, grad_activated: Tensor, activated: Tensor, x: Tensor, weight: Tensor, mean: Tensor,
                         invstd: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """Gradients of ``x``, the BatchNorm's weight and bias from the ReLU output's gradient."""
        grad_normed = grad_activated.masked_fill_(activated <= 0, 0)
        return torch.ops.aten.native_batch_norm_backward(
            grad_normed, x, weight, None, None, mean, invstd, True, ctx.eps, list(ctx.needs_input_grad[:3]))


class BatchNormReLUConv(torch.autograd.Function):
    """``conv(relu(norm(x)))`` (no conv bias) keeping ``x`` and the batch statistics, not the ReLU output."""

    @staticmethod
    def forward(ctx, x: Tensor, norm_weight: Tensor, norm_bias: Tensor, conv_weight: Tensor,
                norm: nn.BatchNorm2d, conv: nn.Conv2d) -> Tensor:
        activated, mean, invstd = _BatchNormReLU.normalize(norm, x)
        out = F.conv2d(activated, conv_weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        ctx.eps, ctx.conv = norm.eps, (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        ctx.save_for_backward(x, norm_weight, norm_bias, conv_weight, mean, invstd)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, norm_weight, norm_bias, conv_weight, mean, invstd = ctx.saved_tensors
        activated = _BatchNormReLU.recompute(x, norm_weight, norm_bias, mean, invstd)
        stride, padding, dilation, groups = ctx.conv
        grad_activated, grad_conv_weight, _ = torch.ops.aten.convolution_backward(
            grad_out, activated, conv_weight, None, stride, padding, dilation, False, [0, 0], groups,
            [True, ctx.needs_input_grad[3], False])
        grad_x, grad_weight, grad_bias = _BatchNormReLU.backward_through(ctx, grad_activated, activated, x,
                                                                         norm_weight, mean, invstd)
        return grad_x, grad_weight, grad_bias, grad_conv_weight, None, None


class BatchNormReLUMaxPool(torch.autograd.Function):
    """``max_pool(relu(norm(x)))`` keeping ``x`` and the batch statistics, not the ReLU output nor the pool's
    indices (both recomputed in backward)."""

    @staticmethod
    def forward(ctx, x: Tensor, norm_weight: Tensor, norm_bias: Tensor, norm: nn.BatchNorm2d,
                pool: nn.MaxPool2d) -> Tensor:
        activated, mean, invstd = _BatchNormReLU.normalize(norm, x)
        ctx.eps, ctx.pool = norm.eps, (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
        ctx.save_for_backward(x, norm_weight, norm_bias, mean, invstd)
        return F.max_pool2d(activated, *ctx.pool)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, norm_weight, norm_bias, mean, invstd = ctx.saved_tensors
        activated = _BatchNormReLU.recompute(x, norm_weight, norm_bias, mean, invstd)
        _, indices = F.max_pool2d(activated, *ctx.pool, return_indices=True)
        kernel, stride, padding, dilation = ([v, v] if isinstance(v, int) else list(v) for v in ctx.pool[:4])
        grad_activated = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_out, activated, kernel, stride, padding, dilation, ctx.pool[4], indices)
        grad_x, grad_weight, grad_bias = _BatchNormReLU.backward_through(ctx, grad_activated, activated, x,
                                                                         norm_weight, mean, invstd)
        return grad_x, grad_weight, grad_bias, None, None


def norm_relu_conv(x: Tensor, norm: nn.Module, relu: nn.Module, conv: nn.Conv2d) -> Tensor:
    """``conv(relu(norm(x)))``, fused where :func:`fusable`."""
    if fusable(norm, x):
        return BatchNormReLUConv.apply(x, norm.weight, norm.bias, conv.weight, norm, conv)
    return conv(relu(norm(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, norm: Callable[[int], nn.Module],
                 downsample: Optional[nn.Module] = None, drop_path_rate: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor) -> Tensor:
        out = norm_relu_conv(self.conv1(x), self.bn1, self.relu, self.conv2)
        out = self.bn3(norm_relu_conv(out, self.bn2, self.relu, self.conv3))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(identity + drop_path(out, self.drop_path_rate, self.training))


class ResNet(nn.Module):
    """Stem + stages 1-3: [B, 3, H, W] -> [B, 1024, H/16, W/16] (channels-last memory)."""

    def __init__(self, blocks: Sequence[int], norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for index, (planes, count, stride) in enumerate(zip((64, 128, 256), blocks, (1, 2, 2))):
            rates = drop_path_rates(drop_path_rate, count)
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), norm(planes * 4))
            stage = [Bottleneck(inplanes, planes, stride, norm, downsample)]  # the first block never drops
            stage += [Bottleneck(planes * 4, planes, 1, norm, drop_path_rate=rates[i]) for i in range(1, count)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
            inplanes = planes * 4
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        # channels-last activations: oneDNN's and cuDNN's faster convolutions, and the [B, H*W, C] patch
        # sequence the encoder reads is then a view, not a copy
        x = self.conv1(x.contiguous(memory_format=torch.channels_last))
        if fusable(self.bn1, x):
            x = BatchNormReLUMaxPool.apply(x, self.bn1.weight, self.bn1.bias, self.bn1, self.maxpool)
        else:
            x = self.maxpool(self.relu(self.bn1(x)))
        return self.layer3(self.layer2(self.layer1(x)))
