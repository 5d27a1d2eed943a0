"""The OFA layers' and ResNet's memory-lean pieces compute what the unfused modules compute, and keep less for
backward."""
import copy
from typing import List

import pytest
import torch
from fairseq import utils

from ofa_el.models.ofa import resnet
from ofa_el.models.ofa.layers import ActivationLayerNorm, LeanDropout
from ofa_el.models.ofa.resnet import BLOCKS, FrozenBatchNorm2d, ResNet

resnet_fusable = resnet.fusable


def saved_elements(compute) -> List[int]:
    """Sizes of the distinct tensors autograd keeps for backward while ``compute()`` runs."""
    sizes, seen = [], set()

    def pack(tensor):
        key = (tensor.untyped_storage().data_ptr(), tensor.numel())
        if key not in seen:
            seen.add(key)
            sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        compute()
    return sizes


#: tensors of x's size autograd keeps for norm(activation(x)): gelu needs its input, relu only its output
#: (which the LayerNorm keeps too)
UNFUSED_KEPT = {"gelu": 2, "relu": 1}


@pytest.mark.parametrize("activation", sorted(UNFUSED_KEPT))
def test_activation_layer_norm_is_the_unfused_modules_and_keeps_x_alone(activation):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 16, generator=generator, requires_grad=True)
    norm = torch.nn.LayerNorm(16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16, generator=generator))
        norm.bias.copy_(torch.randn(16, generator=generator))
    act = utils.get_activation_fn(activation)
    grad_out = torch.randn(7, 3, 16, generator=generator)
    computations = {"unfused": lambda: norm(act(x)),
                    "fused": lambda: ActivationLayerNorm.apply(x, norm.weight, norm.bias, norm.eps, act)}
    results = {}
    for name, compute in computations.items():
        out = compute()
        results[name] = (out, torch.autograd.grad(out, (x, norm.weight, norm.bias), grad_out))
    (fused, fused_grads), (unfused, unfused_grads) = results["fused"], results["unfused"]
    assert torch.equal(fused, unfused)
    for name, a, b in zip(("x", "weight", "bias"), fused_grads, unfused_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), f"{name}: {(a - b).abs().max():.3g}"
    big = x.numel()
    unfused_kept = [size for size in saved_elements(computations["unfused"]) if size == big]
    fused_kept = [size for size in saved_elements(computations["fused"]) if size == big]
    assert (len(unfused_kept), len(fused_kept)) == (UNFUSED_KEPT[activation], 1)  # x alone


def saved_bytes(compute) -> int:
    total = []

    def pack(tensor):
        total.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        compute()
    return sum(total)


def activation_bytes(compute, weights) -> int:
    """Bytes of the distinct storages autograd keeps while ``compute()`` runs, those in ``weights`` left out."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        compute()
    return sum(storages.values())


def test_lean_dropout_is_dropout_with_a_one_byte_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 4, 32, requires_grad=True)
    dropout = LeanDropout(0.25, module_name="test").train()
    out = dropout(x)
    kept = out != 0
    assert 0.7 < kept.float().mean() < 0.8
    assert torch.allclose(out[kept], x[kept] / 0.75)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.allclose(grad, kept.float() / 0.75)  # the gradient flows where the sample was kept
    assert saved_bytes(lambda: dropout(x)) == x.numel()  # a bool per element
    assert saved_bytes(lambda: torch.nn.functional.dropout(x, 0.25, training=True)) >= 4 * x.numel()
    assert dropout.eval()(x) is x


def resnet_pair():
    """Two identical small ResNets (random BatchNorm parameters and statistics) and an input batch."""
    torch.manual_seed(0)
    net = ResNet(BLOCKS["resnet18"])
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.1)
    x = torch.randn(2, 3, 48, 48)
    return net.train(), copy.deepcopy(net).train(), x


@pytest.mark.parametrize("steps", [1, 2])
def test_fused_batch_norm_relu_is_the_modules_and_keeps_less(monkeypatch, steps):
    """Training on CPU, the fused BatchNorm-ReLU-conv/max-pool ResNet gives the modules' outputs exactly, their
    gradients, running statistics and batch counts, and keeps less for backward."""
    fused, modules, x = resnet_pair()
    unfused = {"value": False}
    monkeypatch.setattr(resnet, "fusable", lambda norm, inp: not unfused["value"] and resnet_fusable(norm, inp))
    grad_out = None
    for _ in range(steps):
        outputs = {}
        for name, net in (("fused", fused), ("modules", modules)):
            unfused["value"] = name == "modules"
            net.zero_grad(set_to_none=True)
            inp = x.clone().requires_grad_(True)
            out = net(inp)
            if grad_out is None:
                grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
            out.backward(grad_out)
            outputs[name] = (out.detach(), inp.grad)
        assert torch.equal(outputs["fused"][0], outputs["modules"][0])
        assert torch.allclose(outputs["fused"][1], outputs["modules"][1], rtol=1e-4, atol=1e-6)
    modules_params = dict(modules.named_parameters())
    for name, param in fused.named_parameters():
        reference = modules_params[name].grad
        assert float((param.grad - reference).abs().max()) <= 1e-5 * float(reference.abs().max()), name
    modules_buffers = dict(modules.named_buffers())
    for name, buffer in fused.named_buffers():
        assert torch.equal(buffer, modules_buffers[name]), name  # running statistics and batch counts
    kept = {}
    for name, net in (("fused", fused), ("modules", modules)):
        unfused["value"] = name == "modules"
        weights = {param.untyped_storage().data_ptr() for param in net.parameters()}
        kept[name] = activation_bytes(lambda: net(x.requires_grad_(True)), weights)
    # a Bottleneck keeps 5 activations instead of 7 (its input, the three BatchNorms' inputs, its output), and
    # the stem its BatchNorm's input instead of the max-pool's input and indices too
    assert kept["fused"] < 0.8 * kept["modules"]


def test_batch_norm_runs_as_modules_where_the_fused_path_does_not_apply():
    net, _, x = resnet_pair()
    norm = net.layer1[0].bn1
    conv_out = net.layer1[0].conv1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))
    assert resnet.fusable(norm, conv_out)
    assert not resnet.fusable(norm.eval(), conv_out)  # evaluation: the running statistics, nothing to keep
    norm.train()
    with torch.no_grad():
        assert not resnet.fusable(norm, conv_out)
    assert not resnet.fusable(FrozenBatchNorm2d(norm.num_features), conv_out)
