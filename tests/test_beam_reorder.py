"""Beam search does not copy the encoder's keys and values while the batch keeps its size, and still decodes
exactly as when it does (and as a full forward pass)."""
import torch
from fairseq import options
from fairseq.data import Dictionary
from fairseq.sequence_generator import SequenceGenerator

from ofa_el.models.ofa.attention import OFAAttention
from ofa_el.models.ofa.model import OFAModel

VOCAB = 60


class Task:
    def __init__(self):
        self.source_dictionary = self.target_dictionary = Dictionary()
        for i in range(VOCAB - len(self.source_dictionary)):
            self.source_dictionary.add_symbol(f"w{i}")


def tiny_model(seed: int = 0) -> OFAModel:
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        "/dev/null", "--arch", "ofa_tiny", "--task", "translation", "--encoder-embed-dim", "32",
        "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
        "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", "--resnet-type", "resnet18", "--scale-attn", "--scale-fc",
        "--scale-heads", "--disable-entangle"])
    torch.manual_seed(seed)
    return OFAModel.build_model(args, Task()).eval()


def batch(size: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {"net_input": {
        "src_tokens": torch.randint(4, VOCAB, (size, 6), generator=g),
        "src_lengths": torch.full((size,), 6),
        "patch_images": torch.randn(size, 3, 32, 32, generator=g),
        "patch_masks": torch.ones(size, dtype=torch.bool),
    }}


def cross_attention_modules(model):
    return [m for m in model.modules() if isinstance(m, OFAAttention) and m.cross_attention]


def generate(model, sample, **kwargs):
    generator = SequenceGenerator([model], model.encoder.dictionary, **kwargs)
    return generator.generate([model], sample, bos_token=0)


def test_only_the_decoders_cross_attention_is_marked():
    model = tiny_model()
    marked = cross_attention_modules(model)
    assert len(marked) == 2 and all(m is layer.encoder_attn for m, layer in zip(marked, model.decoder.layers))


def test_cross_attention_keeps_its_cache_while_the_batch_keeps_its_size():
    attention = OFAAttention(8, 2, cross_attention=True)
    self_attention = OFAAttention(8, 2)
    state = {}
    key = torch.randn(3, 4, 8)  # [T_src, B, C]
    for module in (attention, self_attention):
        module(torch.randn(1, 4, 8), key, incremental_state=state, static_kv=module.cross_attention)
    before = {m: m._get_input_buffer(state)["prev_key"] for m in (attention, self_attention)}
    permutation = torch.tensor([1, 0, 3, 2])
    for module in (attention, self_attention):
        module.reorder_incremental_state(state, permutation)
    assert attention._get_input_buffer(state)["prev_key"] is before[attention]  # not copied
    assert torch.equal(self_attention._get_input_buffer(state)["prev_key"], before[self_attention][permutation])
    shrink = torch.tensor([2, 3])  # finished sentences leave the batch: rows must be selected
    attention.reorder_incremental_state(state, shrink)
    assert torch.equal(attention._get_input_buffer(state)["prev_key"], before[attention][shrink])


def test_beam_search_equals_search_with_every_reorder(monkeypatch):
    """Same hypotheses and scores, bit for bit, as when every cached tensor is reordered, including steps
    where finished sentences leave the batch (a large eos embedding makes some sentences end early)."""
    model = tiny_model()
    with torch.no_grad():
        model.decoder.embed_tokens.weight[model.encoder.dictionary.eos()] *= 8
    sample = batch(size=5)
    options = dict(beam_size=4, max_len_b=10, min_len=1)
    batch_sizes = []
    reorder = OFAAttention.reorder_incremental_state

    def recording(module, state, new_order):
        batch_sizes.append(new_order.numel())
        return reorder(module, state, new_order)

    monkeypatch.setattr(OFAAttention, "reorder_incremental_state", recording)
    skipping = generate(model, sample, **options)
    assert len(set(batch_sizes)) > 2, f"the batch never shrank: {sorted(set(batch_sizes))}"
    for module in cross_attention_modules(model):
        module.cross_attention = False  # the old behaviour: copy the encoder's keys and values every step
    copying = generate(model, sample, **options)
    for ours, reference in zip(skipping, copying):
        assert len(ours) == len(reference)
        for hyp, ref in zip(ours, reference):
            assert torch.equal(hyp["tokens"], ref["tokens"])
            assert torch.equal(hyp["positional_scores"], ref["positional_scores"])


def test_every_hypothesis_equals_a_full_forward():
    model = tiny_model(seed=1)
    sample = batch(size=3, seed=1)
    for index, hypotheses in enumerate(generate(model, sample, beam_size=3, max_len_b=6, min_len=2)):
        single = {k: v[index:index + 1] for k, v in sample["net_input"].items()}
        for hyp in hypotheses:
            tokens = torch.cat([torch.zeros(1, dtype=torch.long), hyp["tokens"]])[None]
            with torch.no_grad():
                lprobs = torch.log_softmax(model(**single, prev_output_tokens=tokens[:, :-1])[0], -1)
            expected = lprobs[0].gather(-1, tokens[0, 1:, None]).squeeze(-1)
            assert torch.allclose(hyp["positional_scores"], expected, atol=1e-4)
