"""The OFA model: checkpoint key layout per arch, numerical identity with OFA, loading, generation, training;
its attention paths (SDPA, the lean CPU-training path, OFA's explicit computation) agree in outputs and gradients.

The references come from OFA's own code: tests/fixtures/ofa_micro (built by tests/fixtures/build_ofa_fixture.py)
and the per-arch state-dict layouts in tests/fixtures/ofa_manifests (built by tests/fixtures/build_ofa_manifests.py),
both in the repository with their PROVENANCE.md, and, where ../shared is present, the larger shared micro_a fixture.
"""
import argparse
import hashlib
import json
import lzma
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import pytest
import torch
from fairseq import checkpoint_utils, options
from fairseq.data import Dictionary
from fairseq.sequence_generator import SequenceGenerator

from conftest import SHARED_SPECS
from ofa_el.criterions.adjust_label_smoothed_encouraging_loss import AdjustLabelSmoothedEncouragingLossCriterion
from ofa_el.models.ofa import attention
from ofa_el.models.ofa.attention import LeanAttention, combined_mask, constant_mask, explicit_attention
from ofa_el.models.ofa.model import OFAModel
from ofa_el.models.ofa.position import image_position_ids

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "ofa_micro"
MANIFESTS = Path(__file__).resolve().parent / "fixtures" / "ofa_manifests"
OFA_SPECS = SHARED_SPECS / "ofa"
MICRO_A = OFA_SPECS / "micro_a"
OUTPUT_KEYS = ("logits", "encoder_out", "incremental_logits_row0", "logits_patch_masks_true_false")


class Task:
    def __init__(self, size: int):
        self.source_dictionary = self.target_dictionary = Dictionary()
        for i in range(size - len(self.source_dictionary)):
            self.source_dictionary.add_symbol(f"w{i}")


def parse_model_args(arch, flags):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, ["/dev/null", "--arch", arch, "--task", "translation", *flags])
    return args


@pytest.mark.parametrize("arch", ["ofa_tiny", "ofa_medium", "ofa_base", "ofa_large", "ofa_huge"])
def test_state_dict_matches_the_official_manifest(arch):
    meta = json.loads((MANIFESTS / "meta.json").read_text())[arch]
    flags = [f for f in meta["cli"] if not f.startswith(("--bpe-dir", "--task", "--arch", "--max-src-length",
                                                          "--max-tgt-length", "--num-bins", "--patch-image-size"))]
    args = parse_model_args(arch, flags)
    with torch.device("meta"):
        model = OFAModel.build_model(args, Task(59457))
    manifest = json.loads(lzma.decompress((MANIFESTS / f"manifest_{arch}.json.xz").read_bytes()))
    state = model.state_dict()
    assert list(state) == list(manifest)
    assert {k: list(v.shape) for k, v in state.items()} == manifest
    unique = {id(p): p.numel() for p in model.parameters()}
    assert sum(unique.values()) == meta["params_unique"]
    assert len(state) == meta["num_state_dict_keys"]


@dataclass
class Reference:
    """A fixture built by OFA's code: its checkpoint (decompressed), model args, inputs and OFA's outputs."""
    checkpoint: Path
    args: argparse.Namespace
    dict_size: int
    inputs: Dict
    expected: Dict

    def model_args(self, **changes) -> argparse.Namespace:
        return argparse.Namespace(**dict(vars(self.args), **changes))

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return torch.load(self.checkpoint, weights_only=True)["model"]


def load_reference(folder: Path, scratch: Path) -> Reference:
    checkpoint = scratch / "checkpoint.pt"
    with lzma.open(folder / "checkpoint.pt.xz") as src, open(checkpoint, "wb") as dst:
        shutil.copyfileobj(src, dst)
    state = torch.load(checkpoint, weights_only=True)
    return Reference(checkpoint, state["cfg"]["model"], state["model"]["encoder.embed_tokens.weight"].size(0),
                     torch.load(folder / "inputs.pt", weights_only=True),
                     torch.load(folder / "expected.pt", weights_only=True))


@pytest.fixture(scope="module")
def ofa_micro(tmp_path_factory) -> Reference:
    return load_reference(FIXTURE, tmp_path_factory.mktemp("ofa_micro"))


@pytest.fixture(scope="module")
def micro_a(tmp_path_factory) -> Reference:
    if not MICRO_A.is_dir():
        pytest.skip(f"shared micro_a fixture not found at {MICRO_A} (shared/ beside the repo); "
                    "tests/fixtures/ofa_micro covers the same code paths, with 1/32-grid weights")
    return load_reference(MICRO_A, tmp_path_factory.mktemp("micro_a"))


def build_reference_model(reference: Reference) -> OFAModel:
    model = OFAModel.build_model(reference.model_args(), Task(reference.dict_size))
    model.load_state_dict(reference.state_dict(), strict=True)
    return model.eval()


def close(a, b):
    """micro_a's documented tolerance: float32 noise is ~1e-6, typical re-implementation mistakes move >1e-3."""
    return torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fixture_files_are_the_ones_provenance_records(ofa_micro):
    """A partly rebuilt or edited fixture would compare against outputs OFA never produced from these weights."""
    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    assert sha256(ofa_micro.checkpoint) == manifest["checkpoint_sha256_uncompressed"]
    recorded = dict(re.findall(r"^\| `([\w.]+)` \| [\d,]+ \| `([0-9a-f]{64})` \|",
                               (FIXTURE / "PROVENANCE.md").read_text(), flags=re.M))
    assert set(recorded) == {"checkpoint.pt.xz", "inputs.pt", "expected.pt", "dict.txt", "manifest.json"}
    assert recorded == {name: sha256(FIXTURE / name) for name in recorded}


def test_state_dict_matches_the_fixture_manifest(ofa_micro):
    """Keys, order, shapes and dtypes as OFA's code made them for the fixture's flags."""
    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    model = OFAModel.build_model(ofa_micro.model_args(), Task(ofa_micro.dict_size))
    state = model.state_dict()
    assert {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in state.items()} \
        == manifest["keys"]
    assert list(state) == list(manifest["keys"])
    assert sum(p.numel() for p in model.parameters()) == manifest["counts"]["unique_parameters"]
    assert ofa_micro.dict_size == manifest["dictionary"]["size"]


@pytest.mark.parametrize("fixture_name", ["ofa_micro", "micro_a"])
def test_reproduces_ofa_outputs(fixture_name, request):
    """Every output OFA's code produced, on the in-repo fixture and (where present) micro_a.

    micro_a adds full-precision weights: ofa_micro's weights lie on a 1/32 grid (to compress), which a loader that
    lost precision (a round trip through bf16 or fp16) would leave unchanged.
    """
    reference: Reference = request.getfixturevalue(fixture_name)
    model, inputs, expected = build_reference_model(reference), reference.inputs, reference.expected
    net_input = {k: inputs[k] for k in ("src_tokens", "src_lengths", "patch_images", "patch_masks")}
    with torch.no_grad():
        logits, _ = model(**net_input, prev_output_tokens=inputs["prev_output_tokens"])
        encoder_out = model.encoder(**net_input)
        masked, _ = model(**dict(net_input, patch_masks=torch.tensor([True, False])),
                          prev_output_tokens=inputs["prev_output_tokens"])
        first = model.encoder(**{k: v[:1] for k, v in net_input.items()})
        state, steps = {}, []
        for t in range(1, inputs["prev_output_tokens"].size(1) + 1):
            out, _ = model.decoder(inputs["prev_output_tokens"][:1, :t], encoder_out=first, incremental_state=state)
            steps.append(out[:, -1])
    ours = dict(zip(OUTPUT_KEYS, (logits, encoder_out["encoder_out"][0], torch.stack(steps, 1), masked)))
    for key in OUTPUT_KEYS:
        assert ours[key].shape == expected[key].shape, key
        assert close(ours[key], expected[key]), f"{key}: max |diff| {(ours[key] - expected[key]).abs().max():.3g}"
    assert torch.equal(encoder_out["encoder_padding_mask"][0], expected["encoder_padding_mask"])


def test_loads_through_fairseq_checkpoint_utils(ofa_micro):
    """fairseq's loader on torch >= 2.6 (weights_only), with the plugin's allow-list."""
    state = checkpoint_utils.load_checkpoint_to_cpu(str(ofa_micro.checkpoint))
    assert isinstance(state["cfg"]["model"], argparse.Namespace)
    model = OFAModel.build_model(state["cfg"]["model"], Task(ofa_micro.dict_size))
    model.load_state_dict(state["model"], strict=True, model_cfg=state["cfg"]["model"])
    inputs = ofa_micro.inputs
    with torch.no_grad():
        logits, _ = model.eval()(**{k: inputs[k] for k in ("src_tokens", "src_lengths", "patch_images",
                                                          "patch_masks", "prev_output_tokens")})
    assert close(logits, ofa_micro.expected["logits"])


def test_smaller_and_larger_dictionaries_are_adapted(ofa_micro, caplog):
    size, state = ofa_micro.dict_size, ofa_micro.state_dict()
    bigger = OFAModel.build_model(ofa_micro.model_args(), Task(size + 20))  # e.g. more --num-bins
    with caplog.at_level("INFO"):
        bigger.load_state_dict(dict(state), strict=True, model_cfg=ofa_micro.model_args())
    assert f"padded from {size} to {size + 20} rows" in caplog.text
    assert torch.equal(bigger.encoder.embed_tokens.weight[:size], state["encoder.embed_tokens.weight"])
    smaller = OFAModel.build_model(ofa_micro.model_args(), Task(size - 1))  # no <mask>: one row fewer
    smaller.load_state_dict(dict(state), strict=True, model_cfg=ofa_micro.model_args())
    assert torch.equal(smaller.decoder.output_projection.weight, state["encoder.embed_tokens.weight"][:-1])


def test_wrong_arch_is_refused_with_the_mismatched_keys(ofa_micro):
    other = ofa_micro.model_args(encoder_layers=3, encoder_ffn_embed_dim=96)
    model = OFAModel.build_model(other, Task(ofa_micro.dict_size))
    expected = r"encoder\.layers\.0\.fc1\.weight: checkpoint \(64, 32\) vs model \(96, 32\)"
    with pytest.raises(ValueError, match=expected):
        model.load_state_dict(ofa_micro.state_dict(), strict=True, model_cfg=other)


def tiny_args(**overrides):
    args = parse_model_args("ofa_tiny", ["--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
                                         "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
                                         "--encoder-layers", "2", "--decoder-layers", "2",
                                         "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
                                         "--resnet-type", "resnet18", "--scale-attn", "--scale-fc", "--scale-heads",
                                         "--disable-entangle"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def random_batch(batch=4, vocab=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(4, vocab, (batch, 5), generator=g)
    target[:, -1] = 2
    return {
        "net_input": {
            "src_tokens": torch.randint(4, vocab, (batch, 6), generator=g),
            "src_lengths": torch.full((batch,), 6),
            "patch_images": torch.randn(batch, 3, 32, 32, generator=g),
            "patch_masks": torch.ones(batch, dtype=torch.bool),
            "prev_output_tokens": torch.cat([torch.zeros(batch, 1, dtype=torch.long), target[:, :-1]], 1),
        },
        "target": target, "ntokens": target.numel(), "nsentences": batch,
    }


def test_beam_search_matches_full_forward():
    torch.manual_seed(0)
    model = OFAModel.build_model(tiny_args(), Task(60)).eval()
    sample = random_batch()
    generator = SequenceGenerator([model], model.encoder.dictionary, beam_size=3, max_len_b=6, min_len=2)
    hypotheses = generator.generate([model], sample, bos_token=0)
    best = hypotheses[0][0]
    tokens = torch.cat([torch.zeros(1, dtype=torch.long), best["tokens"]])[None]
    single = {k: v[:1] for k, v in sample["net_input"].items() if k != "prev_output_tokens"}
    with torch.no_grad():
        lprobs = torch.log_softmax(model(**single, prev_output_tokens=tokens[:, :-1])[0], -1)
    expected = lprobs[0].gather(-1, tokens[0, 1:, None]).squeeze(-1)
    assert torch.allclose(best["positional_scores"], expected, atol=1e-4)  # cached decoding == full forward


@pytest.mark.parametrize("checkpoint_activations", [False, True])
def test_short_training_lowers_the_el_loss(checkpoint_activations):
    torch.manual_seed(0)
    model = OFAModel.build_model(tiny_args(checkpoint_activations=checkpoint_activations), Task(60))
    criterion = AdjustLabelSmoothedEncouragingLossCriterion(Task(60), sentence_avg=False, label_smoothing=0.1)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    sample = random_batch()
    losses = []
    for _ in range(40):
        optimiser.zero_grad()
        loss, size, _ = criterion(model.train(), sample)
        (loss / size).backward()
        optimiser.step()
        losses.append(loss.item() / size)
    assert losses[-1] < 0.5 * losses[0]


def test_freeze_embedding_flags_stop_gradients():
    model = OFAModel.build_model(tiny_args(freeze_encoder_embedding=True, freeze_decoder_embedding=True), Task(60))
    assert not model.encoder.embed_tokens.weight.requires_grad
    assert model.decoder.output_projection.weight is model.encoder.embed_tokens.weight


def test_bfloat16_step_with_full_log_el_is_finite():
    """Half precision with EL at log_end 1.0 (its largest gradients): finite loss and gradients."""
    torch.manual_seed(0)
    model = OFAModel.build_model(tiny_args(), Task(60)).to(torch.bfloat16).train()
    criterion = AdjustLabelSmoothedEncouragingLossCriterion(Task(60), sentence_avg=False, label_smoothing=0.1,
                                                            log_end=1.0)
    sample = random_batch()
    sample["net_input"]["patch_images"] = sample["net_input"]["patch_images"].to(torch.bfloat16)
    loss, _, _ = criterion(model, sample)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g.float()).all() for g in grads)


# ---------------------------------------------------------------- attention paths
PATHS = ("sdpa", "lean", "explicit")


def attention_inputs(dtype, seed=0, bsz=2, heads=3, length=6, dim=4):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(bsz, heads, length, dim, generator=g, dtype=dtype, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, heads, length, length, generator=g, dtype=dtype, requires_grad=True)  # shared by the batch
    future = torch.triu(torch.full((length, length), float("-inf"), dtype=dtype), 1)
    padding = torch.zeros(bsz, length, dtype=torch.bool)
    padding[1, -2:] = True
    return q, k, v, bias, constant_mask(future, padding, dtype)


# float64 inputs still take a float32 softmax on both paths; the lean one's exp(s - logsumexp) carries float32's
# rounding times the scores' size (up to ~7 here): ~2e-6 from exact float64 on these inputs, OFA's order ~3e-7
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 5e-6), (torch.float32, 1e-5)])
@pytest.mark.parametrize("relative", [False, True], ids=["base", "base+table"])
@pytest.mark.parametrize("chunk_bytes", [attention.CHUNK_BYTES, 1], ids=["all-heads", "one-head-at-a-time"])
def test_lean_attention_matches_ofa_order_with_gradients(dtype, tolerance, relative, chunk_bytes, monkeypatch):
    """Output and the gradients of q, k, v, the batch-shared base bias and the relative table, against OFA's
    softmax(q k^T + bias + mask) v with the bias materialised (both take the softmax in float32, as OFA does,
    whatever the input dtype), whether the heads are taken all at once or one at a time."""
    monkeypatch.setattr(attention, "CHUNK_BYTES", chunk_bytes)
    q, k, v, bias, constant = attention_inputs(dtype)
    g = torch.Generator().manual_seed(9)
    table = torch.randn(7, q.size(1), generator=g, dtype=dtype, requires_grad=True) if relative else None
    index = torch.randint(0, 7, (1, q.size(2), q.size(2)), generator=g) if relative else None
    grad_out = torch.randn(q.shape, dtype=dtype, generator=torch.Generator().manual_seed(5))
    wanted = (q, k, v, bias) + ((table,) if relative else ())
    results = []
    for compute in (lambda: LeanAttention.apply(q, k, v, bias, table, index, constant),
                    lambda: explicit_attention(q, k, v, combined_mask(attention.position_bias(bias, table, index),
                                                                      constant), torch.nn.Identity())):
        out = compute()
        grads = torch.autograd.grad(out, wanted, grad_out)
        results.append((out, grads))
    (lean, lean_grads), (explicit, explicit_grads) = results
    assert torch.allclose(lean, explicit, atol=tolerance, rtol=0)
    for name, a, b in zip(("q", "k", "v", "bias", "table"), lean_grads, explicit_grads):
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, atol=tolerance, rtol=0), f"{name}: {(a - b).abs().max():.3g}"
    assert all(grad.abs().sum() > 0 for grad in explicit_grads[3:])  # the bias parts do get gradients


def test_head_chunks_cover_every_head_once_within_the_budget(monkeypatch):
    query = torch.zeros(2, 12, 10, 4)
    monkeypatch.setattr(attention, "CHUNK_BYTES", 2 * 10 * 30 * 4 * 5)  # five heads' scores over 30 keys
    chunks = attention.head_chunks(query, key_len=30)
    assert [(c.start, c.stop) for c in chunks] == [(0, 5), (5, 10), (10, 12)]
    monkeypatch.setattr(attention, "CHUNK_BYTES", 1)
    assert len(attention.head_chunks(query, key_len=30)) == 12  # never less than one head


def test_the_encoders_relative_index_reproduces_ofas_block_bias():
    """The one table and index of a layer give OFA's bias: the absolute bias plus the token table on token pairs,
    the image table on patch pairs, nothing on mixed pairs."""
    torch.manual_seed(0)
    model = OFAModel.build_model(tiny_args(), Task(60))
    encoder = model.encoder
    text_len, patch_ids = 5, image_position_ids(2, 3, model.args.image_bucket_size)[None, :]
    num_patches, heads = patch_ids.size(1), encoder.num_heads
    length = num_patches + text_len
    base = torch.randn(1, heads, length, length)
    with torch.no_grad():
        ours = attention.position_bias(base, encoder.relative_bias_table(1, with_patches=True),
                                       encoder.relative_bias_index(text_len, patch_ids))
        expected = base.clone()
        token_buckets = encoder.token_rp_bucket[:text_len, :text_len]
        expected[:, :, -text_len:, -text_len:] += encoder.token_rel_pos_table_list[1](token_buckets).permute(2, 0, 1)
        image_buckets = encoder.image_rp_bucket[patch_ids[:, :, None], patch_ids[:, None, :]]
        expected[:, :, :num_patches, :num_patches] += encoder.image_rel_pos_table_list[1](image_buckets).permute(
            0, 3, 1, 2)
    assert torch.equal(ours, expected)
    assert torch.equal(ours[:, :, :num_patches, num_patches:], base[:, :, :num_patches, num_patches:])


def forced(monkeypatch, path):
    monkeypatch.setattr(attention, "attention_path", lambda query, bias, dropout: path)


def outputs_and_gradients(model, net_input):
    model.zero_grad(set_to_none=True)
    logits, _ = model(**net_input)
    logits.logsumexp(-1).sum().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fixture_name", ["ofa_micro", "micro_a"])
def test_every_path_gives_ofas_outputs_and_the_same_gradients(fixture_name, monkeypatch, tmp_path):
    """With gradients on (what training runs), each path's logits reproduce OFA's, and every parameter's gradient
    matches the explicit path's (OFA's order of operations) within 1e-5 of its scale; the second row has padded
    text and a masked image, so padding and the batch-shared bias are both exercised."""
    folder = FIXTURE if fixture_name == "ofa_micro" else MICRO_A
    if not folder.is_dir():
        pytest.skip(f"{folder} not found (shared/ beside the repo)")
    reference = load_reference(folder, tmp_path)
    model = build_reference_model(reference)
    inputs = reference.inputs
    net_input = {key: inputs[key] for key in ("src_tokens", "src_lengths", "patch_images", "patch_masks",
                                              "prev_output_tokens")}
    results = {}
    for path in PATHS:
        forced(monkeypatch, path)
        results[path] = outputs_and_gradients(model, net_input)
        assert close(results[path][0], reference.expected["logits"]), path
    padded = dict(net_input, patch_masks=torch.tensor([True, False]))
    padded["src_tokens"] = net_input["src_tokens"].clone()
    padded["src_tokens"][1, -2:] = model.encoder.padding_idx
    for inputs_name, batch in (("fixture", net_input), ("padded", padded)):
        forced(monkeypatch, "explicit")
        ref_logits, ref_grads = outputs_and_gradients(model, batch)
        floor = 1e-3 * max(float(g.abs().max()) for g in ref_grads.values())
        for path in ("sdpa", "lean"):
            forced(monkeypatch, path)
            logits, grads = outputs_and_gradients(model, batch)
            assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=0), (inputs_name, path)
            assert grads.keys() == ref_grads.keys()
            for name, grad in grads.items():
                scale = max(float(ref_grads[name].abs().max()), floor)
                assert float((grad - ref_grads[name]).abs().max()) <= 1e-5 * scale, (inputs_name, path, name)


def count_paths(monkeypatch):
    chosen = []
    choose = attention.attention_path

    def recording(query, bias, dropout):
        chosen.append(choose(query, bias, dropout))
        return chosen[-1]

    monkeypatch.setattr(attention, "attention_path", recording)
    return chosen


def test_paths_are_chosen_by_what_sdpa_can_serve(monkeypatch):
    torch.manual_seed(0)
    model = OFAModel.build_model(tiny_args(), Task(60))
    sample = random_batch()
    chosen = count_paths(monkeypatch)
    with torch.no_grad():
        model.eval()(**sample["net_input"])
    assert chosen and set(chosen) == {"sdpa"}  # inference: fused kernels
    chosen.clear()
    model.train()(**sample["net_input"])[0].sum().backward()
    assert set(chosen) == {"lean"}  # CPU training, a position bias that needs a gradient
    chosen.clear()
    for p in model.parameters():
        p.requires_grad_(False)
    model.encoder.layers[0].fc1.weight.requires_grad_(True)
    model(**sample["net_input"])[0].sum().backward()
    assert set(chosen) == {"sdpa"}  # frozen position bias: SDPA's CPU kernel serves training too
    chosen.clear()
    dropped = OFAModel.build_model(tiny_args(attention_dropout=0.1), Task(60)).train()
    dropped(**sample["net_input"])[0].sum().backward()
    assert set(chosen) == {"explicit"}  # attention dropout on CPU: OFA's computation as it is


def test_positions_are_one_row_for_the_batch_and_survive_reordering():
    torch.manual_seed(0)
    model = OFAModel.build_model(tiny_args(), Task(60)).eval()
    net_input = {k: v for k, v in random_batch()["net_input"].items() if k != "prev_output_tokens"}
    with torch.no_grad():
        shared = model.encoder(**net_input)
        sampled = model.encoder(**net_input, sample_patch_num=2)  # a random patch subset per image
    assert shared["position_embeddings"][0].shape[0] == 1
    assert sampled["position_embeddings"][0].shape[0] == 4
    reordered = model.encoder.reorder_encoder_out(shared, torch.tensor([3, 3, 0, 1, 2]))
    assert reordered["position_embeddings"][0] is shared["position_embeddings"][0]
    assert torch.equal(reordered["encoder_out"][0], shared["encoder_out"][0][:, [3, 3, 0, 1, 2]])
    per_sample = model.encoder.reorder_encoder_out(sampled, torch.tensor([1, 0]))
    assert torch.equal(per_sample["position_embeddings"][0], sampled["position_embeddings"][0][[1, 0]])
