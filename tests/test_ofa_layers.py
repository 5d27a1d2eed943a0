"""The OFA layers' memory-lean pieces compute what the unfused modules compute, and keep less for backward."""
from typing import List

import pytest
import torch
from fairseq import utils

from ofa_el.models.ofa.layers import ActivationLayerNorm, LeanDropout


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
