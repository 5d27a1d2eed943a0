"""Fixed candidate sets: answer-list loading, the trie and its masks, all-candidate scoring, trie-constrained search."""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from fairseq import options
from fairseq.data import data_utils

from conftest import TINY_MODEL
from ofa_el.data.candidate_dataset import decoder_prompt
from ofa_el.data.candidates import CandidateSet, CandidateTrie, load_answer_list, parse_answer_dict
from ofa_el.data.text import TextCodec
from ofa_el.models.ofa.model import OFAModel
from ofa_el.tasks.candidate_scoring import TriePrefixConstraint, score_candidates

ANSWERS = ["no", "yes", "red", "red circle", "two", "blue square", "green", "three red circles", "circle"]


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    subprocess.run([sys.executable, "-m", "ofa_el.tools.make_demo_data", "--out", str(out), "--seed", "3",
                    "--train-images", "8", "--val-images", "4", "--test-images", "2", "--refcoco-train-images", "2",
                    "--refcoco-eval-images", "2", "--image-size", "32"], check=True, capture_output=True)
    return TextCodec(str(out / "bpe"), num_bins=16)


# ---------------------------------------------------------------- answer lists
class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_answer_lists_in_every_format_give_the_same_ordered_answers(tmp_path):
    ans2label = {"yes": 0, "no": 1, "2": 2, "red circle": 3}
    (tmp_path / "a.pkl").write_bytes(pickle.dumps(ans2label, protocol=2))
    (tmp_path / "b.pkl").write_bytes(pickle.dumps(ans2label, protocol=0))
    (tmp_path / "c.json").write_text(json.dumps(ans2label))
    (tmp_path / "d.json").write_text(json.dumps(list(ans2label)))
    (tmp_path / "e.txt").write_text("yes\nno\n2\nred circle\n")
    (tmp_path / "f.txt").write_text("yes\r\nno\r\n2\r\nred circle")
    for name in ("a.pkl", "b.pkl", "c.json", "d.json", "e.txt", "f.txt"):
        assert load_answer_list(str(tmp_path / name)) == ["yes", "no", "2", "red circle"], name
    assert parse_answer_dict('{"no": 0, "yes": 1}') == ["no", "yes"]


def test_a_code_running_pickle_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"yes": RunsCode()}))
    with pytest.raises(ValueError, match=rf"--ans2label-file {path}: refusing to load 'posix.system'"):
        load_answer_list(str(path))
    path.write_bytes(pickle.dumps({"yes": {1, 2}}, protocol=2))  # protocol 2 names builtins.set: refused too
    with pytest.raises(ValueError, match=r"refusing to load '(__builtin__|builtins).set'"):
        load_answer_list(str(path))


@pytest.mark.parametrize("name, content, message", [
    ("a.txt", "yes\n\nno\n", r"a.txt: line 2: empty answer"),
    ("b.txt", "yes\nno\nyes\n", r"b.txt: line 3: answer 'yes' repeats line 1"),
    ("c.json", '{"yes": "0"}', r"labels must be integers"),
    ("d.json", '[1, 2]', r"answer 0 is not a non-empty one-line string"),
    ("e.json", '"yes"', r"expected a dict"),
    ("f.json", '{"yes": 0', r"not valid JSON"),
    ("g.txt", "", r"no answers"),
])
def test_bad_answer_lists_name_the_file_and_what_is_wrong(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load_answer_list(str(tmp_path / name))
    assert str(tmp_path / name) in str(err.value)


def test_a_missing_answer_list_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="--ans2label-file: file not found"):
        load_answer_list(str(tmp_path / "none.pkl"))


# ---------------------------------------------------------------- trie and masks
def test_trie_allows_the_next_tokens_and_only_eos_after_an_unknown_prefix():
    trie = CandidateTrie(eos=2, sequences=[[0, 5, 6, 2], [0, 5, 2], [0, 7, 2]])
    assert sorted(trie.allowed([0])) == [5, 7]
    assert sorted(trie.allowed([0, 5])) == [2, 6]
    assert trie.allowed([0, 5, 6]) == [2]
    assert trie.allowed([0, 9]) == [2]


def allowed_by_definition(candidates, prefix):
    """The tokens v such that some candidate's [bos] + tokens + [eos] starts with [bos] + prefix + [v]."""
    full = [[candidates.bos, *t.tolist(), candidates.eos] for t in candidates.tokens]
    head = [candidates.bos, *prefix]
    following = {seq[len(head)] for seq in full if seq[:len(head)] == head and len(seq) > len(head)}
    return following or {candidates.eos}


def test_masks_match_their_definition(codec):
    candidates = CandidateSet(ANSWERS, codec)
    assert any(len(t) > 1 for t in candidates.tokens), "the test needs multi-token answers"
    for index, tokens in enumerate(candidates.tokens):
        mask = candidates.answer_mask(tokens)
        assert mask.shape == (len(tokens) + 1, len(codec.dictionary))
        for t in range(len(tokens) + 1):
            expected = allowed_by_definition(candidates, tokens[:t].tolist())
            assert set(mask[t].nonzero().flatten().tolist()) == expected
            assert set(candidates.allowed_rows(index)[t]) == expected
        assert mask[len(tokens)].nonzero().flatten().tolist() == [codec.dictionary.eos()] or \
            any(ANSWERS[j].startswith(ANSWERS[index] + " ") for j in range(len(ANSWERS)))
    # an answer outside the set: after its first unknown prefix, only eos
    outside = codec.encode(" purple hexagon").tolist()
    mask = candidates.answer_mask(outside)
    for t in range(1, len(outside) + 1):
        assert set(mask[t].nonzero().flatten().tolist()) == allowed_by_definition(candidates, outside[:t])


def test_target_mask_puts_the_answer_rows_at_the_end(codec):
    candidates = CandidateSet(ANSWERS, codec)
    answer = candidates.tokens[3]
    mask = candidates.target_mask(10, answer.tolist())
    assert mask.shape == (10, len(codec.dictionary))
    assert mask[:10 - len(answer) - 1].all()
    assert torch.equal(mask[10 - len(answer) - 1:], candidates.answer_mask(answer))
    with pytest.raises(ValueError, match="cannot end with an answer"):
        candidates.target_mask(len(answer), answer.tolist())


# ---------------------------------------------------------------- all-candidate scoring
def tiny_model(codec):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, ["/dev/null", "--arch", "ofa_tiny", "--task", "translation",
                                                *TINY_MODEL, "--dropout", "0"])

    class Task:
        source_dictionary = target_dictionary = codec.dictionary

    torch.manual_seed(0)
    return OFAModel.build_model(args, Task()).eval()


def batch_of(codec, questions):
    sources = [torch.cat([torch.tensor([codec.dictionary.bos()]), codec.encode(q),
                          torch.tensor([codec.dictionary.eos()])]) for q in questions]
    src = data_utils.collate_tokens(sources, codec.dictionary.pad(), left_pad=False)
    torch.manual_seed(1)
    net_input = {"src_tokens": src, "src_lengths": src.ne(codec.dictionary.pad()).sum(1),
                 "patch_images": torch.randn(len(questions), 3, 32, 32),
                 "patch_masks": torch.ones(len(questions), dtype=torch.bool)}
    return net_input, sources


def brute_force_scores(model, net_input, prompts, candidates, constrained=True):
    """Each (sample, candidate) pair alone through the ordinary forward: the definition of the score."""
    scores = torch.zeros(len(prompts), len(candidates))
    for b, prompt in enumerate(prompts):
        single = {k: v[b:b + 1] for k, v in net_input.items()}
        for j, answer in enumerate(candidates.tokens):
            prev = torch.cat([prompt, answer])[None]
            target = torch.cat([prompt[1:], answer, torch.tensor([candidates.eos])])
            single_src = single["src_tokens"][:, :int(single["src_lengths"])]
            logits, _ = model(single_src, single["src_lengths"], prev, single["patch_images"], single["patch_masks"])
            logits = logits[0, len(prompt) - 1:].float()
            if constrained:
                logits = logits.masked_fill(~candidates.answer_mask(answer), float("-inf"))
            lprobs = torch.log_softmax(logits, -1)
            scores[b, j] = lprobs.gather(-1, target[len(prompt) - 1:, None]).sum()
    return scores


@pytest.mark.parametrize("prompt_type", ["none", "prev_output", "src"])
def test_all_candidate_scores_equal_brute_force_per_candidate_scoring(codec, prompt_type):
    model = tiny_model(codec)
    candidates = CandidateSet(ANSWERS, codec)
    net_input, sources = batch_of(codec, [" what colour is the circle?", " how many?", " is there a red square?"])
    prompts = [decoder_prompt(s, prompt_type, codec.dictionary.bos()) for s in sources]
    expected = brute_force_scores(model, net_input, prompts, candidates)
    for per_pass in (1, 4, len(ANSWERS)):
        got = score_candidates(model, net_input, prompts, candidates, candidates_per_pass=per_pass)
        assert got.shape == (3, len(ANSWERS))
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    unconstrained = score_candidates(model, net_input, prompts, candidates, constrained=False)
    torch.testing.assert_close(unconstrained, brute_force_scores(model, net_input, prompts, candidates, False),
                               atol=1e-4, rtol=1e-4)
    assert (unconstrained <= expected + 1e-5).all()  # renormalising over fewer tokens never lowers a score


def test_trie_constraint_forces_the_prompt_then_follows_the_trie(codec):
    candidates = CandidateSet(ANSWERS, codec)
    constraint = TriePrefixConstraint(candidates)
    pad, bos = codec.dictionary.pad(), codec.dictionary.bos()
    constraint.set_prefixes(torch.tensor([[11, 12, 13], [21, pad, pad]]))
    assert constraint(0, torch.tensor([bos])) == [11]
    assert constraint(0, torch.tensor([bos, 11, 12])) == [13]
    assert sorted(constraint(0, torch.tensor([bos, 11, 12, 13]))) == sorted(candidates.allowed_after([]))
    red = candidates.tokens[ANSWERS.index("red circle")].tolist()
    assert sorted(constraint(1, torch.tensor([bos, 21, red[0]]))) == sorted(candidates.allowed_after(red[:1]))
    assert constraint(1, torch.tensor([bos, 21, 4])) == [codec.dictionary.eos()]  # unknown prefix


# ---------------------------------------------------------------- the loss at a step with one allowed token
@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("criterion_name", ["ce", "el", "poly"])
def test_a_step_with_one_allowed_token_adds_no_loss_and_no_gradient(impl, criterion_name):
    """After a complete answer that no other candidate extends, only eos is allowed: p = 1 there. With label
    smoothing, fairseq's eps/(K-1) has no other entry to go to; the token must add no gradient and (CE, Poly-1)
    no loss, not NaN, as in OFA. (EL's bonus past log_end is its tangent line, a constant at p = 1.)"""
    from conftest import Task, make_sample
    from ofa_el.criterions.adjust_label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropyCriterion
    from ofa_el.criterions.adjust_label_smoothed_encouraging_loss import AdjustLabelSmoothedEncouragingLossCriterion
    from ofa_el.criterions.adjust_label_smoothed_poly1_cross_entropy import (
        AdjustLabelSmoothedPoly1CrossEntropyCriterion)

    build = {"ce": lambda: AdjustLabelSmoothedCrossEntropyCriterion(Task(), label_smoothing=0.1, loss_impl=impl),
             "el": lambda: AdjustLabelSmoothedEncouragingLossCriterion(Task(), label_smoothing=0.1, log_end=0.75,
                                                                       loss_impl=impl),
             "poly": lambda: AdjustLabelSmoothedPoly1CrossEntropyCriterion(Task(), label_smoothing=0.1,
                                                                           loss_impl=impl)}
    criterion = build[criterion_name]()
    sample = make_sample()
    target = sample["target"]
    masks = torch.ones(*target.shape, 16, dtype=torch.bool)
    single = (0, 4)  # row 0's eos: only eos allowed
    masks[single] = False
    masks[single][target[single]] = True
    logits = torch.randn(*target.shape, 16, requires_grad=True)

    def loss_of(sample):
        class Model(torch.nn.Module):
            def forward(self, **net_input):
                return logits, {}

            def get_targets(self, sample, net_output):
                return sample["target"]
        return criterion(Model(), sample)[0]

    with_single = loss_of(dict(sample, constraint_masks=masks))
    assert torch.isfinite(with_single)
    (gradient,) = torch.autograd.grad(with_single, logits)
    assert torch.isfinite(gradient).all() and gradient[single].abs().max() < 1e-6
    if criterion_name == "el":
        return
    dropped = sample["target"].clone()
    dropped[single] = 1  # the same batch without that token (pad): the loss must not change
    without = loss_of(dict(sample, target=dropped, constraint_masks=masks))
    torch.testing.assert_close(with_single, without)


def trie_beam_search(model, net_input, prompts, candidates, codec, search_class):
    """The best hypothesis (answer tokens, score) per sample of an exhaustive trie-constrained beam search."""
    from fairseq.sequence_generator import SequenceGenerator

    constraint = TriePrefixConstraint(candidates)
    generator = SequenceGenerator([model], codec.dictionary, beam_size=len(candidates), max_len_b=30,
                                  normalize_scores=False, search_strategy=search_class(codec.dictionary, constraint))
    prefix_tokens = data_utils.collate_tokens([p[1:] for p in prompts], codec.dictionary.pad(), left_pad=False)
    constraint.set_prefixes(prefix_tokens)
    with torch.no_grad():
        outputs = generator.generate([model], {"net_input": net_input}, prefix_tokens=prefix_tokens,
                                     bos_token=codec.dictionary.bos())
    return [(out[0]["tokens"][len(p) - 1:-1].tolist(), float(out[0]["score"])) for out, p in zip(outputs, prompts)]


@pytest.mark.parametrize("prompt_type", ["none", "prev_output"])
def test_trie_beam_search_scores_answers_as_all_candidate_scoring(codec, prompt_type):
    """A beam as wide as the candidate set explores the whole trie, so it must find all-candidate scoring's best
    answer with the same score: each step renormalised over the trie's tokens (OFA's generator), the forced prompt
    adding nothing. fairseq's own prefix-constrained search fails this: it charges every step for the
    probability mass outside the trie."""
    from ofa_el.tasks.candidate_scoring import TrieBeamSearch

    model = tiny_model(codec)
    candidates = CandidateSet(ANSWERS, codec)
    net_input, sources = batch_of(codec, [" what colour is the circle?", " how many?", " is there a red square?"])
    prompts = [decoder_prompt(s, prompt_type, codec.dictionary.bos()) for s in sources]
    scores = score_candidates(model, net_input, prompts, candidates)
    found = trie_beam_search(model, net_input, prompts, candidates, codec, TrieBeamSearch)
    for b, (tokens, score) in enumerate(found):
        assert tokens == candidates.tokens[int(scores[b].argmax())].tolist()
        assert score == pytest.approx(float(scores[b].max()), abs=1e-4)
