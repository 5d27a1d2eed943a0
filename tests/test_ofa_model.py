"""The OFA model: checkpoint key layout per arch, numerical identity with OFA, loading, generation, training."""
import argparse
import json
import lzma
import shutil

import pytest
import torch
from fairseq import checkpoint_utils, options
from fairseq.data import Dictionary
from fairseq.sequence_generator import SequenceGenerator

from conftest import SHARED_SPECS
from ofa_el.criterions.adjust_label_smoothed_encouraging_loss import AdjustLabelSmoothedEncouragingLossCriterion
from ofa_el.models.ofa.model import OFAModel

OFA_SPECS = SHARED_SPECS / "ofa"
MICRO = OFA_SPECS / "micro_a"
needs_specs = pytest.mark.skipif(not MICRO.is_dir(),
                                 reason=f"OFA fixture not found at {MICRO} (shared/ beside the repo)")


class Task:
    def __init__(self, size: int):
        self.source_dictionary = self.target_dictionary = Dictionary()
        for i in range(size - len(self.source_dictionary)):
            self.source_dictionary.add_symbol(f"w{i}")


def parse_model_args(arch, flags):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, ["/dev/null", "--arch", arch, "--task", "translation", *flags])
    return args


@needs_specs
@pytest.mark.parametrize("arch", ["ofa_tiny", "ofa_medium", "ofa_base", "ofa_large", "ofa_huge"])
def test_state_dict_matches_the_official_manifest(arch):
    meta = json.loads((OFA_SPECS / "manifest_meta.json").read_text())[arch]
    flags = [f for f in meta["cli"] if not f.startswith(("--bpe-dir", "--task", "--arch", "--max-src-length",
                                                          "--max-tgt-length", "--num-bins", "--patch-image-size"))]
    args = parse_model_args(arch, flags)
    with torch.device("meta"):
        model = OFAModel.build_model(args, Task(59457))
    manifest = json.loads((OFA_SPECS / f"manifest_{arch}.json").read_text())
    state = model.state_dict()
    assert list(state) == list(manifest)
    assert {k: list(v.shape) for k, v in state.items()} == manifest
    unique = {id(p): p.numel() for p in model.parameters()}
    assert sum(unique.values()) == meta["params_unique"]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    path = tmp_path_factory.mktemp("micro") / "checkpoint.pt"
    with lzma.open(MICRO / "checkpoint.pt.xz") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    args = argparse.Namespace(**json.loads((MICRO / "args.json").read_text())["model_args_after_arch"])
    return path, args, torch.load(MICRO / "inputs.pt", weights_only=True), torch.load(MICRO / "expected.pt",
                                                                                         weights_only=True)


def build_micro(micro):
    path, args, _, _ = micro
    model = OFAModel.build_model(argparse.Namespace(**vars(args)), Task(8597))
    model.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    return model.eval()


def close(a, b):
    return torch.allclose(a, b, rtol=1e-4, atol=1e-4)


@needs_specs
def test_reproduces_ofa_outputs(micro):
    model, (_, _, inputs, expected) = build_micro(micro), micro
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
    assert close(logits, expected["logits"])
    assert close(encoder_out["encoder_out"][0], expected["encoder_out"])
    assert torch.equal(encoder_out["encoder_padding_mask"][0], expected["encoder_padding_mask"])
    assert close(torch.stack(steps, 1), expected["incremental_logits_row0"])
    assert close(masked, expected["logits_patch_masks_true_false"])


@needs_specs
def test_loads_through_fairseq_checkpoint_utils(micro):
    """fairseq's loader on torch >= 2.6 (weights_only), with the plugin's allow-list."""
    path, _, inputs, expected = micro
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert isinstance(state["cfg"]["model"], argparse.Namespace)
    model = OFAModel.build_model(state["cfg"]["model"], Task(8597))
    model.load_state_dict(state["model"], strict=True, model_cfg=state["cfg"]["model"])
    with torch.no_grad():
        logits, _ = model.eval()(**{k: inputs[k] for k in ("src_tokens", "src_lengths", "patch_images",
                                                          "patch_masks", "prev_output_tokens")})
    assert close(logits, expected["logits"])


@needs_specs
def test_smaller_and_larger_dictionaries_are_adapted(micro, caplog):
    path, args, inputs, _ = micro
    state = torch.load(path, weights_only=True)["model"]
    bigger = OFAModel.build_model(argparse.Namespace(**vars(args)), Task(8597 + 20))  # e.g. more --num-bins
    with caplog.at_level("INFO"):
        bigger.load_state_dict(dict(state), strict=True, model_cfg=args)
    assert "padded from 8597 to 8617 rows" in caplog.text
    assert torch.equal(bigger.encoder.embed_tokens.weight[:8597], state["encoder.embed_tokens.weight"])
    smaller = OFAModel.build_model(argparse.Namespace(**vars(args)), Task(8596))  # no <mask>: one row fewer
    smaller.load_state_dict(dict(state), strict=True, model_cfg=args)
    assert torch.equal(smaller.decoder.output_projection.weight, state["encoder.embed_tokens.weight"][:-1])


@needs_specs
def test_wrong_arch_is_refused_with_the_mismatched_keys(micro):
    path, args, _, _ = micro
    other = argparse.Namespace(**dict(vars(args), encoder_layers=3, encoder_ffn_embed_dim=96))
    model = OFAModel.build_model(other, Task(8597))
    expected = r"encoder\.layers\.0\.fc1\.weight: checkpoint \(128, 64\) vs model \(96, 64\)"
    with pytest.raises(ValueError, match=expected):
        model.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True, model_cfg=other)


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
