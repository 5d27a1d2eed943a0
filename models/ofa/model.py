"""The OFA encoder-decoder (Wang et al., 2022) inside stock fairseq: model ``ofa``, archs ``ofa_tiny`` .. ``ofa_huge``.

Parameter names, shapes and computation follow OFA's checkpoints, so official checkpoints load
unchanged. The encoder reads ``[image patches ; text tokens]``: ResNet patches projected to the
model width plus a type embedding, text embeddings plus a type embedding. Positions enter only
as attention biases shared across layers: an absolute bias from position embeddings (computed
once per forward) plus a per-layer relative bias for text-text and patch-patch pairs.

Positions do not depend on the sample (text positions count from 0, every image has the same patch
grid), so the position embeddings and biases are computed for one row, ``[1, ...]``, and broadcast
over the batch: B times less bias work and memory. Only ``--sample-patch-num`` (a random patch subset
per image) makes them per sample, ``[B, ...]``.
"""
import logging
from typing import Dict, List, Optional, Tuple

import torch
from fairseq import utils
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderDecoderModel,
    FairseqIncrementalDecoder,
    register_model,
    register_model_architecture,
)
from fairseq.modules import LayerNorm
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.transformer_sentence_encoder import init_bert_params
from torch import Tensor, nn

from ...errors import OptionError
from .attention import IncrementalState
from .layers import LeanDropout, OFADecoderLayer, OFAEncoderLayer
from .position import image_position_ids, image_rel_pos_buckets, token_rel_pos_buckets
from .resnet import BLOCKS, ResNet, drop_path_rates, norm_layer

logger = logging.getLogger(__name__)

EncoderOut = Dict[str, List[Tensor]]


def embedding(num: int, dim: int, padding_idx: Optional[int] = None) -> nn.Embedding:
    table = nn.Embedding(num, dim, padding_idx=padding_idx)
    nn.init.normal_(table.weight, mean=0, std=dim ** -0.5)
    if padding_idx is not None:
        nn.init.zeros_(table.weight[padding_idx])
    return table


def absolute_bias(q_linear: nn.Linear, k_linear: nn.Linear, query_pos: Tensor, key_pos: Tensor, heads: int,
                  scaling: float) -> Tensor:
    """``(q(P_q) * s) k(P_k)^T`` per head: the absolute position bias, [B or 1, H, Lq, Lk] (a batch of 1
    on either side broadcasts)."""
    q = q_linear(query_pos).view(query_pos.size(0), query_pos.size(1), heads, -1).transpose(1, 2) * scaling
    k = k_linear(key_pos).view(key_pos.size(0), key_pos.size(1), heads, -1).transpose(1, 2)
    return torch.matmul(q, k.transpose(2, 3))


def batch_cat(parts: List[Tensor], dim: int) -> Tensor:
    """``torch.cat`` of tensors whose batch (dim 0) is B or 1, the 1s broadcast to B."""
    bsz = max(part.size(0) for part in parts)
    return torch.cat([part.expand(bsz, *part.shape[1:]) for part in parts], dim=dim)


def maybe_checkpoint(layer: nn.Module, args) -> nn.Module:
    """``--checkpoint-activations``: recompute the layer's activations in backward to save memory."""
    return checkpoint_wrapper(layer) if getattr(args, "checkpoint_activations", False) else layer


class OFAEncoder(FairseqEncoder):
    def __init__(self, args, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        self.register_buffer("version", torch.Tensor([3]))
        self.args = args
        dim = embed_tokens.embedding_dim
        self.dropout_module = LeanDropout(args.dropout, module_name=type(self).__name__)
        self.padding_idx = embed_tokens.padding_idx
        self.max_source_positions = args.max_source_positions
        self.num_heads = args.encoder_attention_heads
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if args.no_scale_embedding else dim ** 0.5
        self.layernorm_embedding = LayerNorm(dim) if args.layernorm_embedding else None
        self.type_embedding = embedding(2, dim) if args.add_type_embedding else None
        if args.resnet_type not in BLOCKS:
            raise OptionError(f"--resnet-type: expected one of {sorted(BLOCKS)}, got {args.resnet_type!r}")
        self.embed_images = ResNet(BLOCKS[args.resnet_type], norm_layer(args.freeze_resnet, args.sync_bn),
                                   args.resnet_drop_path_rate)
        self.image_proj = nn.Linear(1024, dim)
        self.patch_layernorm_embedding = LayerNorm(dim) if args.patch_layernorm_embedding else None
        self.embed_positions = embedding(args.max_source_positions + 2, dim)
        self.embed_image_positions = embedding(args.image_bucket_size ** 2 + 1, dim)
        self.pos_ln = LayerNorm(dim)
        self.image_pos_ln = LayerNorm(dim)
        self.pos_scaling = float(dim / self.num_heads * args.attn_scale_factor) ** -0.5
        self.pos_q_linear = nn.Linear(dim, dim)
        self.pos_k_linear = nn.Linear(dim, dim)
        rates = drop_path_rates(args.encoder_drop_path_rate, args.encoder_layers)
        self.layers = nn.ModuleList([maybe_checkpoint(OFAEncoderLayer(args, rate), args) for rate in rates])
        self.layer_norm = LayerNorm(dim) if args.encoder_normalize_before else None
        self.token_rel_pos_table_list = nn.ModuleList(
            [embedding(2 * args.token_bucket_size - 1, self.num_heads) for _ in range(args.encoder_layers)])
        self.image_rel_pos_table_list = nn.ModuleList(
            [embedding((2 * args.image_bucket_size - 1) ** 2 + 3, self.num_heads) for _ in range(args.encoder_layers)])
        self.register_buffer("token_rp_bucket", token_rel_pos_buckets(args.token_bucket_size))
        self.register_buffer("image_rp_bucket", image_rel_pos_buckets(args.image_bucket_size))
        self.entangle_position_embedding = args.entangle_position_embedding

    def embed_patches(self, patch_images: Tensor, sample_patch_num: Optional[int]):
        """Patch features [B, P, 1024] and their grid position ids: [1, P], or [B, P] for sampled patches."""
        features = self.embed_images(patch_images)
        height, width = features.shape[-2:]
        features = features.flatten(2).transpose(1, 2)
        ids = image_position_ids(height, width, self.args.image_bucket_size, features.device)[None, :]
        if sample_patch_num is not None and sample_patch_num < ids.size(1):
            # a random subset of patches per image (OFA's --sample-patch-num for two-view batches)
            ids = ids.expand(features.size(0), -1)
            order = torch.rand(ids.shape, device=ids.device).argsort(-1)[:, :sample_patch_num]
            features = features.gather(1, order[:, :, None].expand(-1, -1, features.size(2)))
            ids = ids.gather(1, order)
        return features, ids

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None,
                patch_images: Optional[Tensor] = None, patch_masks: Optional[Tensor] = None,
                sample_patch_num: Optional[int] = None, return_all_hiddens: bool = False,
                patch_images_2: Optional[Tensor] = None, code_masks: Optional[Tensor] = None) -> EncoderOut:
        if patch_images_2 is not None:
            raise NotImplementedError("patch_images_2 (two images per sample) is not supported by this model")
        bsz, text_len = src_tokens.shape
        padding_mask = src_tokens.eq(self.padding_idx)
        text_pos = self.embed_positions(torch.arange(text_len, device=src_tokens.device)[None, :])  # [1, T, C]
        x = self.embed_scale * self.embed_tokens(src_tokens)
        if self.entangle_position_embedding:
            x = x + text_pos
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[0]
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = self.dropout_module(x)
        positions = self.pos_ln(text_pos)
        num_patches, patch_ids = 0, None
        if patch_images is not None:
            features, patch_ids = self.embed_patches(patch_images, sample_patch_num)
            num_patches = patch_ids.size(1)
            image_pos = self.embed_image_positions(patch_ids)
            image_x = self.embed_scale * self.image_proj(features)
            if self.entangle_position_embedding:
                image_x = image_x + image_pos
            if self.type_embedding is not None:
                image_x = image_x + self.type_embedding.weight[1]
            if self.patch_layernorm_embedding is not None:
                image_x = self.patch_layernorm_embedding(image_x)
            x = torch.cat([self.dropout_module(image_x), x], dim=1)
            image_padding = torch.zeros(bsz, num_patches, dtype=torch.bool, device=padding_mask.device)
            if patch_masks is not None:
                image_padding = image_padding | ~patch_masks.bool()[:, None]
            padding_mask = torch.cat([image_padding, padding_mask], dim=1)
            positions = batch_cat([self.image_pos_ln(image_pos), positions], dim=1)
        has_pads = bool(padding_mask.any())
        if has_pads:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        x = x.transpose(0, 1)
        abs_bias = absolute_bias(self.pos_q_linear, self.pos_k_linear, positions, positions, self.num_heads,
                                 self.pos_scaling)
        rel_index = self.relative_bias_index(text_len, patch_ids)
        states = [x] if return_all_hiddens else []
        for index, layer in enumerate(self.layers):
            table = self.relative_bias_table(index, with_patches=patch_ids is not None)
            x = layer(x, padding_mask if has_pads else None, abs_bias, table, rel_index)
            if return_all_hiddens:
                states.append(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return {
            "encoder_out": [x],  # T x B x C
            "encoder_padding_mask": [padding_mask],  # B x T
            "encoder_embedding": [],
            "encoder_states": states,
            "src_tokens": [],
            "src_lengths": [],
            "position_embeddings": [positions],  # (B or 1) x T x C, after the position LayerNorms
        }

    def relative_bias_index(self, text_len: int, patch_ids: Optional[Tensor]) -> Tensor:
        """Bucket ids ``[B or 1, T, T]`` into :meth:`relative_bias_table` for ``[patches ; tokens]``: patch pairs look
        up the image table, token pairs the token table, and mixed pairs (no relative bias in OFA) the zero row."""
        token_buckets = self.token_rp_bucket[:text_len, :text_len]
        if patch_ids is None:
            return token_buckets[None]
        token_rows = self.token_rel_pos_table_list[0].num_embeddings
        zero_row = token_rows + self.image_rel_pos_table_list[0].num_embeddings
        num_patches = patch_ids.size(1)
        length = num_patches + text_len
        index = token_buckets.new_full((patch_ids.size(0), length, length), zero_row)
        index[:, :num_patches, :num_patches] = self.image_rp_bucket[patch_ids[:, :, None], patch_ids[:, None, :]]
        index[:, :num_patches, :num_patches] += token_rows
        index[:, num_patches:, num_patches:] = token_buckets
        return index

    def relative_bias_table(self, layer: int, with_patches: bool) -> Tensor:
        """Layer ``layer``'s relative-bias tables as one ``[N, H]`` table: tokens', then patches' and a zero row."""
        tokens = self.token_rel_pos_table_list[layer].weight
        if not with_patches:
            return tokens
        return torch.cat([tokens, self.image_rel_pos_table_list[layer].weight, tokens.new_zeros(1, tokens.size(1))])

    def reorder_encoder_out(self, encoder_out: EncoderOut, new_order: Tensor) -> EncoderOut:
        """Select the rows of ``new_order``; position embeddings of one row serve any batch and stay as they are."""
        batch_dims = {"encoder_out": 1, "encoder_states": 1}
        return {key: [value if key == "position_embeddings" and value.size(0) == 1
                      else value.index_select(batch_dims.get(key, 0), new_order) for value in values]
                for key, values in encoder_out.items()}

    def max_positions(self) -> int:
        return self.max_source_positions


class OFADecoder(FairseqIncrementalDecoder):
    def __init__(self, args, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        self.register_buffer("version", torch.Tensor([3]))
        self.args = args
        dim = args.decoder_embed_dim
        self.dropout_module = LeanDropout(args.dropout, module_name=type(self).__name__)
        self.num_heads = args.decoder_attention_heads
        self.padding_idx = embed_tokens.padding_idx
        self.max_target_positions = args.max_target_positions
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if args.no_scale_embedding else dim ** 0.5
        self.layernorm_embedding = LayerNorm(dim) if args.layernorm_embedding else None
        self.embed_positions = embedding(args.max_target_positions + 2, dim)
        self.embed_image_positions = embedding(args.image_bucket_size ** 2 + 1, dim)
        self.pos_ln = LayerNorm(dim)
        self.image_pos_ln = LayerNorm(dim)
        self.pos_scaling = float(dim / self.num_heads * args.attn_scale_factor) ** -0.5
        self.self_pos_q_linear = nn.Linear(dim, dim)
        self.self_pos_k_linear = nn.Linear(dim, dim)
        self.cross_pos_q_linear = nn.Linear(dim, dim)
        self.cross_pos_k_linear = nn.Linear(dim, dim)
        self.code_layernorm_embedding = LayerNorm(dim) if args.code_layernorm_embedding else None
        rates = drop_path_rates(args.decoder_drop_path_rate, args.decoder_layers)
        self.layers = nn.ModuleList([maybe_checkpoint(OFADecoderLayer(args, rate), args) for rate in rates])
        self.layer_norm = LayerNorm(dim) if args.decoder_normalize_before else None
        self.output_projection = nn.Linear(dim, len(dictionary), bias=False)
        if args.share_decoder_input_output_embed:
            self.output_projection.weight = embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, mean=0, std=dim ** -0.5)
        self.token_rel_pos_table_list = nn.ModuleList(
            [embedding(2 * args.token_bucket_size - 1, self.num_heads) for _ in range(args.decoder_layers)])
        self.image_rel_pos_table_list = nn.ModuleList(
            [embedding((2 * args.image_bucket_size - 1) ** 2 + 3, self.num_heads) for _ in range(args.decoder_layers)])
        self.register_buffer("token_rp_bucket", token_rel_pos_buckets(args.token_bucket_size))
        self.register_buffer("image_rp_bucket", image_rel_pos_buckets(args.image_bucket_size))
        window = args.code_image_size // 8
        code_ids = image_position_ids(window, window, args.image_bucket_size)
        # position ids of image-code targets: bos, the code grid, then OFA's fixed filler
        self.register_buffer("image_position_idx", torch.cat(
            [torch.tensor([0]), code_ids, torch.full((769,), 1024, dtype=torch.long)]))
        # OFA adds target position embeddings to the input unless --disable-entangle (all recipes set it)
        self.add_target_positions = not args.disable_entangle

    def forward(self, prev_output_tokens: Tensor, encoder_out: Optional[EncoderOut] = None,
                incremental_state: Optional[IncrementalState] = None, features_only: bool = False,
                code_masks: Optional[Tensor] = None, **unused) -> Tuple[Tensor, Dict]:
        x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state, code_masks)
        return (x if features_only else self.output_projection(x)), extra

    def extract_features(self, prev_output_tokens: Tensor, encoder_out: EncoderOut,
                         incremental_state: Optional[IncrementalState] = None,
                         code_masks: Optional[Tensor] = None) -> Tuple[Tensor, Dict]:
        if code_masks is not None and bool(code_masks.any()):
            raise NotImplementedError("image-code generation (code_masks) is not supported by this model")
        tgt_len = prev_output_tokens.size(1)
        target_pos = self.embed_positions(torch.arange(tgt_len, device=prev_output_tokens.device)[None, :])
        key_pos = self.pos_ln(target_pos)  # [1, T, C]
        tokens, query_pos, query_rows = prev_output_tokens, key_pos, slice(None)
        if incremental_state is not None:  # keys cover the whole prefix; only the last query row is new
            query_rows = slice(-1, None)
            tokens, target_pos, query_pos = tokens[:, query_rows], target_pos[:, query_rows], key_pos[:, query_rows]
        self_bias = absolute_bias(self.self_pos_q_linear, self.self_pos_k_linear, query_pos, key_pos,
                                  self.num_heads, self.pos_scaling)
        cross_bias = absolute_bias(self.cross_pos_q_linear, self.cross_pos_k_linear, query_pos,
                                   encoder_out["position_embeddings"][0], self.num_heads, self.pos_scaling)
        x = self.embed_scale * self.embed_tokens(tokens)
        if self.add_target_positions:
            x = x + target_pos
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = self.dropout_module(x).transpose(0, 1)
        padding = prev_output_tokens.eq(self.padding_idx)  # over every key, cached ones included
        padding = padding if bool(padding.any()) else None
        future_mask = None
        if incremental_state is None:
            future_mask = torch.triu(x.new_full((tgt_len, tgt_len), float("-inf")), 1)
        token_buckets = self.token_rp_bucket[:tgt_len, :tgt_len][query_rows]
        enc, enc_padding = encoder_out["encoder_out"][0], encoder_out["encoder_padding_mask"][0]
        states = [x]
        for index, layer in enumerate(self.layers):
            x = layer(x, enc, enc_padding, incremental_state, future_mask, padding, self_bias, cross_bias,
                      self.token_rel_pos_table_list[index].weight, token_buckets[None])
            states.append(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return x.transpose(0, 1), {"attn": [None], "inner_states": states}

    def max_positions(self) -> int:
        return self.max_target_positions


@register_model("ofa")
class OFAModel(FairseqEncoderDecoderModel):
    """OFA: a unified image-text encoder-decoder; ``forward`` takes OFA's ``net_input``."""

    def __init__(self, args, encoder: OFAEncoder, decoder: OFADecoder):
        super().__init__(encoder, decoder)
        self.args = args
        if next(self.parameters()).device.type != "meta":  # a meta model (shapes only) has nothing to fill
            self.apply(init_bert_params)  # OFA re-initialises every Linear/Embedding as BERT does
        self.classification_heads = nn.ModuleDict()

    @staticmethod
    def add_args(parser):
        """Model flags with OFA's names; omitted flags take the arch's defaults (fairseq suppresses them)."""
        add = parser.add_argument
        add("--activation-fn", choices=utils.get_available_activation_fns())
        for name in ("dropout", "attention-dropout", "activation-dropout", "resnet-drop-path-rate",
                     "encoder-drop-path-rate", "decoder-drop-path-rate", "attn-scale-factor"):
            add(f"--{name}", type=float)
        for name in ("encoder-embed-dim", "encoder-ffn-embed-dim", "encoder-layers", "encoder-attention-heads",
                     "decoder-embed-dim", "decoder-ffn-embed-dim", "decoder-layers", "decoder-attention-heads",
                     "token-bucket-size", "image-bucket-size", "code-image-size", "max-source-positions",
                     "max-target-positions"):
            add(f"--{name}", type=int)
        add("--resnet-type", choices=sorted(BLOCKS))
        for name, meaning in (
            ("encoder-normalize-before", "pre-LN encoder layers"),
            ("decoder-normalize-before", "pre-LN decoder layers"),
            ("share-decoder-input-output-embed", "tie the output projection to the decoder embedding"),
            ("share-all-embeddings", "one token embedding for encoder, decoder and output"),
            ("layernorm-embedding", "LayerNorm on the token embeddings"),
            ("patch-layernorm-embedding", "LayerNorm on the image-patch embeddings"),
            ("code-layernorm-embedding", "LayerNorm for image-code targets (OFA's image generation)"),
            ("add-type-embedding", "add a text/image type embedding"),
            ("no-scale-embedding", "do not scale embeddings by sqrt(dim)"),
            ("entangle-position-embedding", "also add position embeddings to the encoder inputs"),
            ("disable-entangle", "do not add target position embeddings to the decoder inputs"),
            ("scale-attn", "LayerNorm on attention outputs (NormFormer)"),
            ("scale-fc", "LayerNorm inside the FFN (NormFormer)"),
            ("scale-heads", "learned per-head output scale"),
            ("scale-resids", "learned scale of the FFN residual"),
            ("freeze-resnet", "frozen BatchNorm in the ResNet"),
            ("sync-bn", "synchronised BatchNorm in the ResNet (distributed training)"),
            ("freeze-encoder-embedding", "no gradient for the encoder token embedding"),
            ("freeze-decoder-embedding", "no gradient for the decoder token embedding"),
            ("checkpoint-activations", "recompute layer activations in backward (less memory)"),
        ):
            add(f"--{name}", action="store_true", help=meaning)

    @classmethod
    def build_model(cls, args, task):
        ofa_large(args)  # fill any option the chosen arch left unset
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        if args.share_all_embeddings:
            if src_dict != tgt_dict:
                raise OptionError("--share-all-embeddings requires one dictionary for source and target")
            if args.encoder_embed_dim != args.decoder_embed_dim:
                raise OptionError("--share-all-embeddings requires --encoder-embed-dim == --decoder-embed-dim")
            encoder_embed = embedding(len(src_dict), args.encoder_embed_dim, src_dict.pad())
            decoder_embed = encoder_embed
            args.share_decoder_input_output_embed = True
        else:
            encoder_embed = embedding(len(src_dict), args.encoder_embed_dim, src_dict.pad())
            decoder_embed = embedding(len(tgt_dict), args.decoder_embed_dim, tgt_dict.pad())
        model = cls(args, OFAEncoder(args, src_dict, encoder_embed), OFADecoder(args, tgt_dict, decoder_embed))
        if args.freeze_encoder_embedding:
            encoder_embed.weight.requires_grad = False
        if args.freeze_decoder_embedding:
            decoder_embed.weight.requires_grad = False
        return model

    def forward(self, src_tokens: Tensor, src_lengths: Tensor, prev_output_tokens: Tensor,
                patch_images: Optional[Tensor] = None, patch_masks: Optional[Tensor] = None,
                sample_patch_num: Optional[int] = None, features_only: bool = False,
                patch_images_2: Optional[Tensor] = None, code_masks: Optional[Tensor] = None, **unused):
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, patch_images=patch_images,
                                   patch_masks=patch_masks, sample_patch_num=sample_patch_num,
                                   patch_images_2=patch_images_2)
        return self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=features_only,
                            code_masks=code_masks)

    # ------------------------------------------------------------------ checkpoints
    def upgrade_state_dict_named(self, state_dict: Dict[str, Tensor], name: str) -> None:
        """Adapt an OFA checkpoint to this model as OFA does, logging every change; refuse another arch."""
        super().upgrade_state_dict_named(state_dict, name)
        prefix = f"{name}." if name else ""
        own = self.state_dict()
        self._adapt_token_embeddings(state_dict, prefix, own)
        for part in ("encoder", "decoder"):
            key = f"{prefix}{part}.embed_image_positions.weight"
            if key in state_dict and state_dict[key].size(0) < own[f"{part}.embed_image_positions.weight"].size(0):
                extra = own[f"{part}.embed_image_positions.weight"].size(0) - state_dict[key].size(0)
                state_dict[key] = torch.cat([state_dict[key], _new_rows(extra, state_dict[key])])
                logger.info("checkpoint: %s padded with %d new rows", key, extra)
        state_dict[f"{prefix}decoder.image_position_idx"] = own["decoder.image_position_idx"]
        mismatched = [(k, tuple(state_dict[f"{prefix}{k}"].shape), tuple(v.shape)) for k, v in own.items()
                      if f"{prefix}{k}" in state_dict and state_dict[f"{prefix}{k}"].shape != v.shape]
        unexpected = [k[len(prefix):] for k in state_dict if k.startswith(prefix) and k[len(prefix):] not in own]
        if mismatched or unexpected:
            lines = [f"  {k}: checkpoint {c} vs model {m}" for k, c, m in mismatched[:10]]
            lines += [f"  {k}: not in this model" for k in unexpected[:10]]
            raise OptionError(
                f"the checkpoint does not fit --arch {getattr(self.args, 'arch', '?')} "
                f"({len(mismatched)} keys with other shapes, {len(unexpected)} unknown keys); first ones:\n"
                + "\n".join(lines))
        missing = [k for k in own if f"{prefix}{k}" not in state_dict]
        for key in missing:
            state_dict[f"{prefix}{key}"] = own[key]
        if missing:
            logger.info("checkpoint: %d keys missing, kept from the new model: %s", len(missing),
                        ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))

    def _adapt_token_embeddings(self, state_dict: Dict[str, Tensor], prefix: str, own: Dict[str, Tensor]) -> None:
        """OFA's dictionary changes: one row more without <mask> is trimmed, fewer rows are padded."""
        keys = [f"{prefix}{k}" for k in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                                         "decoder.output_projection.weight") if f"{prefix}{k}" in state_dict]
        if not keys:
            return
        rows, wanted = state_dict[keys[0]].size(0), own["encoder.embed_tokens.weight"].size(0)
        if rows == wanted + 1 and "<mask>" not in self.encoder.dictionary:
            for key in keys:
                state_dict[key] = state_dict[key][:-1]
            logger.info("checkpoint: token embeddings trimmed by one row (no <mask> in the dictionary)")
        elif rows < wanted:
            extra = _new_rows(wanted - rows, state_dict[keys[0]])
            for key in keys:
                state_dict[key] = torch.cat([state_dict[key], extra])
            logger.info("checkpoint: token embeddings padded from %d to %d rows (new rows ~ N(0, dim^-0.5))",
                        rows, wanted)


def _new_rows(count: int, like: Tensor) -> Tensor:
    dim = like.size(1)
    return torch.randn(count, dim, dtype=torch.float32).mul_(dim ** -0.5).to(like.dtype)


def _defaults(args, **values) -> None:
    for key, value in values.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


@register_model_architecture("ofa", "ofa_large")
def ofa_large(args) -> None:
    _defaults(args, encoder_embed_dim=1024, encoder_layers=12, encoder_attention_heads=16, resnet_type="resnet152")
    _defaults(args, encoder_ffn_embed_dim=4 * args.encoder_embed_dim, decoder_embed_dim=args.encoder_embed_dim,
              decoder_layers=12, decoder_attention_heads=16)
    _defaults(args, decoder_ffn_embed_dim=args.encoder_ffn_embed_dim)
    _defaults(args, activation_fn="gelu", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
              resnet_drop_path_rate=0.0, encoder_drop_path_rate=0.0, decoder_drop_path_rate=0.0,
              max_source_positions=1024, max_target_positions=1024, token_bucket_size=256, image_bucket_size=42,
              code_image_size=128, attn_scale_factor=2.0)
    for flag in ("encoder_normalize_before", "decoder_normalize_before", "share_decoder_input_output_embed",
                 "share_all_embeddings", "layernorm_embedding", "patch_layernorm_embedding",
                 "code_layernorm_embedding", "add_type_embedding", "no_scale_embedding"):
        _defaults(args, **{flag: True})
    for flag in ("entangle_position_embedding", "disable_entangle", "scale_attn", "scale_fc", "scale_heads",
                 "scale_resids", "freeze_resnet", "sync_bn", "freeze_encoder_embedding", "freeze_decoder_embedding",
                 "checkpoint_activations"):
        _defaults(args, **{flag: False})


def _arch(name: str, dim: int, layers: Tuple[int, int], heads: int, resnet: str):
    def configure(args) -> None:
        _defaults(args, encoder_embed_dim=dim, encoder_ffn_embed_dim=4 * dim, encoder_layers=layers[0],
                  decoder_layers=layers[1], encoder_attention_heads=heads, decoder_attention_heads=heads,
                  resnet_type=resnet)
        ofa_large(args)

    configure.__name__ = name
    register_model_architecture("ofa", name)(configure)
    return configure


ofa_tiny = _arch("ofa_tiny", 256, (4, 4), 4, "resnet50")
ofa_medium = _arch("ofa_medium", 512, (4, 4), 8, "resnet101")
ofa_base = _arch("ofa_base", 768, (6, 6), 12, "resnet101")
ofa_huge = _arch("ofa_huge", 1280, (24, 12), 16, "resnet152")
