"""OFA's image stem: a ResNet cut after stage 3 (stride 16, 1024 channels), with drop-path.

Parameter names and shapes follow OFA's checkpoints (``encoder.embed_images.*``). OFA's
``resnet18``/``resnet34`` are Bottleneck networks too ([2, 2, 2] and [3, 4, 6] blocks).
"""
from functools import partial
from typing import Callable, List, Optional, Sequence

import torch
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
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
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
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))
