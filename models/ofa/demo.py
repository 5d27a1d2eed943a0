"""``ofa_demo``: the CPU-sized OFA model every demo recipe trains (``DEMO=1``), defined once.

Width 128 (feed-forward 256), 2 encoder and 2 decoder layers of 4 heads, a ResNet-18 stem: small enough for the
synthetic demo data to train in minutes on a CPU, with everything else as in OFA's models.
"""
from fairseq.models import register_model_architecture

from .model import _defaults, ofa_large


@register_model_architecture("ofa", "ofa_demo")
def ofa_demo(args) -> None:
    _defaults(args, encoder_embed_dim=128, decoder_embed_dim=128, encoder_ffn_embed_dim=256,
              decoder_ffn_embed_dim=256, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
              decoder_attention_heads=4, resnet_type="resnet18")
    ofa_large(args)
