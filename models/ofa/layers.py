"""OFA's pre-LN transformer layers: NormFormer-style extra LayerNorms (``--scale-attn``, ``--scale-fc``),
per-head scaling (``--scale-heads``), residual scaling (``--scale-resids``) and drop-path."""
from typing import Callable, Optional

import torch
from fairseq import utils
from fairseq.modules import FairseqDropout, LayerNorm
from torch import Tensor, nn

from .attention import IncrementalState, OFAAttention
from .resnet import drop_path


class ActivationLayerNorm(torch.autograd.Function):
    """``layer_norm(activation(x))`` that keeps only ``x`` for backward and recomputes ``activation(x)`` there.

    In the FFN with ``--scale-fc`` the activation's output is the LayerNorm's input: autograd would keep both
    ``x`` (for the activation's backward) and ``activation(x)`` (for the LayerNorm's), two ``[T, B, ffn_dim]``
    tensors per layer (45 MB each for ofa_base at 480 px, batch 4). Recomputing the element-wise activation in
    backward costs one pass over ``x``; the forward and backward computations are the unfused modules' own
    (``native_layer_norm`` and its backward), so outputs and gradients are theirs bit for bit."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                activation: Callable[[Tensor], Tensor]) -> Tensor:
        out, mean, rstd = torch.native_layer_norm(activation(x), x.shape[-1:], weight, bias, eps)
        ctx.activation = activation
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            activated = ctx.activation(leaf)
        wanted = [True, weight is not None and ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]]
        grad_activated, grad_weight, grad_bias = torch.ops.aten.native_layer_norm_backward(
            grad_out, activated.detach(), x.shape[-1:], mean, rstd, weight, bias, wanted)
        (grad_x,) = torch.autograd.grad(activated, leaf, grad_activated)
        return grad_x, grad_weight, grad_bias, None, None


class LeanDropout(FairseqDropout):
    """fairseq's dropout keeping a one-byte mask for backward on every device.

    On CPU ``F.dropout`` multiplies by a float noise tensor, which autograd keeps: 4 bytes per element of
    every dropped activation (11 MB per dropout for ofa_base at 480 px, batch 4, 13 of them in the encoder).
    ``torch.native_dropout``, what CUDA runs already, keeps a bool mask."""

    @property
    def active(self) -> bool:
        """Whether this call would drop anything (fairseq's own condition)."""
        return self.p > 0 and (self.training or self.apply_during_inference)

    def forward(self, x: Tensor, inplace: bool = False) -> Tensor:
        if inplace or self.p >= 1 or not self.active:
            return super().forward(x, inplace=inplace)
        return torch.native_dropout(x, self.p, True)[0]


class _FeedForward:
    """The FFN half of a layer, shared by encoder and decoder layers."""

    def feed_forward(self, x: Tensor) -> Tensor:
        residual = x
        if self.normalize_before:
            x = self.final_layer_norm(x)
        x = self.fc1(x)
        norm = self.ffn_layernorm
        if norm is not None and not self.activation_dropout_module.active:
            x = ActivationLayerNorm.apply(x, norm.weight, norm.bias, norm.eps, self.activation_fn)
        else:
            x = self.activation_dropout_module(self.activation_fn(x))
            if norm is not None:
                x = norm(x)
        x = self.dropout_module(self.fc2(x))
        if self.w_resid is not None:
            residual = self.w_resid * residual
        x = residual + drop_path(x, self.drop_path_rate, self.training, batch_dim=1)
        return x if self.normalize_before else self.final_layer_norm(x)

    def build_feed_forward(self, args, embed_dim: int, ffn_dim: int) -> None:
        self.activation_fn = utils.get_activation_fn(getattr(args, "activation_fn", "gelu") or "gelu")
        activation_dropout = getattr(args, "activation_dropout", 0.0) or getattr(args, "relu_dropout", 0.0) or 0.0
        self.activation_dropout_module = LeanDropout(float(activation_dropout), module_name=type(self).__name__)
        self.ffn_layernorm = LayerNorm(ffn_dim) if getattr(args, "scale_fc", False) else None
        self.w_resid = nn.Parameter(torch.ones(embed_dim)) if getattr(args, "scale_resids", False) else None


class OFAEncoderLayer(nn.Module, _FeedForward):
    def __init__(self, args, drop_path_rate: float = 0.0):
        super().__init__()
        dim = args.encoder_embed_dim
        self.self_attn = OFAAttention(dim, args.encoder_attention_heads, args.attention_dropout,
                                      args.attn_scale_factor, getattr(args, "scale_heads", False))
        self.self_attn_layer_norm = LayerNorm(dim)
        self.dropout_module = LeanDropout(args.dropout, module_name=type(self).__name__)
        self.normalize_before = args.encoder_normalize_before
        self.fc1 = nn.Linear(dim, args.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(args.encoder_ffn_embed_dim, dim)
        self.attn_ln = LayerNorm(dim) if getattr(args, "scale_attn", False) else None
        self.build_feed_forward(args, dim, args.encoder_ffn_embed_dim)
        self.final_layer_norm = LayerNorm(dim)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor, encoder_padding_mask: Optional[Tensor], self_attn_bias: Tensor,
                rel_table: Optional[Tensor] = None, rel_index: Optional[Tensor] = None) -> Tensor:
        """The position bias is ``self_attn_bias + rel_table[rel_index]`` (see ``attention.position_bias``)."""
        residual = x
        if self.normalize_before:
            x = self.self_attn_layer_norm(x)
        x, _ = self.self_attn(x, x, key_padding_mask=encoder_padding_mask, attn_bias=self_attn_bias,
                              rel_table=rel_table, rel_index=rel_index)
        if self.attn_ln is not None:
            x = self.attn_ln(x)
        x = residual + drop_path(self.dropout_module(x), self.drop_path_rate, self.training, batch_dim=1)
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)
        return self.feed_forward(x)


class OFADecoderLayer(nn.Module, _FeedForward):
    def __init__(self, args, drop_path_rate: float = 0.0):
        super().__init__()
        dim = args.decoder_embed_dim
        heads, scale_heads = args.decoder_attention_heads, getattr(args, "scale_heads", False)
        self.dropout_module = LeanDropout(args.dropout, module_name=type(self).__name__)
        self.self_attn = OFAAttention(dim, heads, args.attention_dropout, args.attn_scale_factor, scale_heads)
        scale_attn = getattr(args, "scale_attn", False)
        self.self_attn_ln = LayerNorm(dim) if scale_attn else None
        self.cross_attn_ln = LayerNorm(dim) if scale_attn else None
        self.normalize_before = args.decoder_normalize_before
        self.self_attn_layer_norm = LayerNorm(dim)
        self.encoder_attn = OFAAttention(dim, heads, args.attention_dropout, args.attn_scale_factor, scale_heads,
                                         kdim=args.encoder_embed_dim, cross_attention=True)
        self.encoder_attn_layer_norm = LayerNorm(dim)
        self.build_feed_forward(args, dim, args.decoder_ffn_embed_dim)
        self.fc1 = nn.Linear(dim, args.decoder_ffn_embed_dim)
        self.fc2 = nn.Linear(args.decoder_ffn_embed_dim, dim)
        self.final_layer_norm = LayerNorm(dim)
        self.drop_path_rate = drop_path_rate

    def _attend(self, x, attention, norm, extra_norm, key, **kwargs):
        residual = x
        if self.normalize_before:
            x = norm(x)
        x, _ = attention(x, key if key is not None else x, **kwargs)
        if extra_norm is not None:
            x = extra_norm(x)
        x = residual + drop_path(self.dropout_module(x), self.drop_path_rate, self.training, batch_dim=1)
        return x if self.normalize_before else norm(x)

    def forward(self, x: Tensor, encoder_out: Tensor, encoder_padding_mask: Optional[Tensor],
                incremental_state: Optional[IncrementalState], self_attn_mask: Optional[Tensor],
                self_attn_padding_mask: Optional[Tensor], self_attn_bias: Tensor, cross_attn_bias: Tensor,
                rel_table: Optional[Tensor] = None, rel_index: Optional[Tensor] = None) -> Tensor:
        """The self-attention's position bias is ``self_attn_bias + rel_table[rel_index]``; the cross-attention's
        is ``cross_attn_bias``."""
        x = self._attend(x, self.self_attn, self.self_attn_layer_norm, self.self_attn_ln, None,
                         key_padding_mask=self_attn_padding_mask, incremental_state=incremental_state,
                         attn_mask=self_attn_mask, attn_bias=self_attn_bias, rel_table=rel_table,
                         rel_index=rel_index)
        x = self._attend(x, self.encoder_attn, self.encoder_attn_layer_norm, self.cross_attn_ln, encoder_out,
                         key_padding_mask=encoder_padding_mask, incremental_state=incremental_state,
                         static_kv=True, attn_bias=cross_attn_bias)
        return self.feed_forward(x)
