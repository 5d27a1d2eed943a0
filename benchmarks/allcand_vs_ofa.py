"""All-candidate VQA scoring: this plugin's ``score_candidates`` beside OFA's own ``eval_vqa_gen``, same weights.

    python benchmarks/allcand_vs_ofa.py --ofa-dir /path/to/OFA [--arch ofa_tiny] [--batch 4] [--candidates 300]
        [--per-pass 20] [--rounds 3] [--threads 2] [--image-size 480] [--json out.json]

OFA's all-candidate validation (``utils/eval_utils.py`` ``eval_vqa_gen``, the same code as ``vqa_gen.py``'s
``valid_step``) repeats the encoder output for every (question, candidate) pair and runs the whole decoder on
each, so every layer projects the ~900-position encoder output to keys and values once per candidate. Ours
(``ofa_el.tasks.candidate_scoring.score_candidates``) lets a question's candidates share its encoder row in
cross-attention and projects only the answer positions to the vocabulary.

Two models run: ``ofa``, OFA's model built by OFA's code (task ``ofa``, OFA's ``utils/BPE`` dictionary + 8192
codes + 1000 bins, VQA recipe flags), scored by OFA's ``eval_vqa_gen``; ``ours``, ``ofa_el``'s model with the
same arguments and OFA's weights, scored by ``score_candidates``. The candidate lists and masks OFA's function
reads are built as OFA's ``vqa_gen.py`` builds them (its ``utils/trie.py`` Trie, chunks of ``--per-pass``),
from ``--candidates`` answers: single words and two-word phrases of OFA's BPE vocabulary. Every timed round
checks that both pick the same answer for every question (tests/test_candidates.py checks the scores
themselves against per-candidate brute force).
Each round times both, in an order flipped every round; the medians and their ratio are reported.

A developer benchmark, not library code: OFA's folder goes on ``sys.path`` (its packages import as ``models``,
``data``, ``utils``; a throw-away user-dir registers its model, as benchmarks/generation_vs_ofa.py does). OFA's
``eval_utils`` also imports its gigaword task and ``editdistance`` for other evaluations; the VQA function uses
neither, so the benchmark registers empty stand-ins for those two names. No OFA code is copied here.
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation_vs_ofa import (ARCHS, ArgumentParser, UserError, build_ofa, build_ours,  # noqa: E402
                               check_json_path, check_ofa_dir, positive_int)

IMAGE_SEED = 7
QUESTIONS = (" what colour is the bus?", " how many people are in the picture?", " is the man wearing a hat?",
             " what is on the table?", " where is the dog?", " what sport is being played?")
#: The model flags of configs/vqa/vqa_ce.yaml (OFA's VQA recipe), --arch and image size aside.
VQA_MODEL_FLAGS = [
    "--encoder-normalize-before", "--decoder-normalize-before",
    "--share-decoder-input-output-embed", "--share-all-embeddings",
    "--layernorm-embedding", "--patch-layernorm-embedding", "--code-layernorm-embedding",
    "--resnet-drop-path-rate=0.0", "--encoder-drop-path-rate=0.2", "--decoder-drop-path-rate=0.2",
    "--dropout=0.1", "--attention-dropout=0.0", "--max-src-length=80", "--max-tgt-length=30",
    "--add-type-embedding", "--scale-attn", "--scale-fc", "--scale-heads", "--disable-entangle", "--num-bins=1000",
]


def parse_command_line(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ofa-dir", required=True, type=Path, help="a checkout of OFA's repository")
    parser.add_argument("--arch", default="ofa_tiny", choices=ARCHS)
    parser.add_argument("--batch", type=positive_int, default=4, help="questions (images) per call")
    parser.add_argument("--candidates", type=positive_int, default=300, help="candidate answers")
    parser.add_argument("--per-pass", type=positive_int, default=20,
                        help="candidates per decoder pass, both sides (OFA's --valid-batch-size)")
    parser.add_argument("--our-per-pass", type=positive_int, default=None,
                        help="candidates per decoder pass on our side (default: --per-pass); ours keeps one copy "
                             "of the encoder keys per question, so a pass of many candidates stays small")
    parser.add_argument("--rounds", type=positive_int, default=3, help="timed rounds; medians are reported")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    parser.add_argument("--image-size", type=positive_int, default=480, help="the VQA recipe's 480; a multiple of 16")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    options = parser.parse_args(argv)
    if options.image_size % 16:
        parser.error(f"--image-size {options.image_size} is not a multiple of 16 (OFA's ResNet stride)")
    return options


def ofa_eval_vqa_gen(ofa_dir: Path):
    """OFA's ``utils/eval_utils.py`` ``eval_vqa_gen``, with stand-ins for two imports it does not use."""
    for name in ("tasks", "tasks.nlg_tasks"):
        sys.modules.setdefault(name, types.ModuleType(name))
    gigaword = types.ModuleType("tasks.nlg_tasks.gigaword")
    gigaword.fix_tokenization = None  # used by OFA's gigaword evaluation only
    sys.modules.setdefault("tasks.nlg_tasks.gigaword", gigaword)
    sys.modules.setdefault("editdistance", types.ModuleType("editdistance"))  # OFA's OCR evaluation only
    spec = importlib.util.spec_from_file_location("ofa_eval_utils", ofa_dir / "utils" / "eval_utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.eval_vqa_gen


def ofa_trie_class(ofa_dir: Path):
    spec = importlib.util.spec_from_file_location("ofa_trie", ofa_dir / "utils" / "trie.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Trie


def candidate_answers(task, count: int) -> List[str]:
    """``count`` distinct answers: alphabetic single words of OFA's BPE vocabulary, then two-word phrases."""
    encoder = task.bpe.bpe.encoder
    words = [token[1:] for token in encoder if token.startswith("\u0120") and token[1:].isalpha()
             and token[1:].islower() and len(token) > 3]
    words = sorted(set(words))[:max(count, 2)]
    answers = words[:count // 2]
    answers += [f"{a} {b}" for a, b in zip(words[count // 2:], reversed(words))][:count - len(answers)]
    if len(answers) < count:
        raise UserError(f"--candidates {count}: OFA's vocabulary gives only {len(answers)} answers this way")
    return answers


def ofa_candidate_lists(task, answers: List[str], per_pass: int, trie_class):
    """What OFA's ``vqa_gen.py`` ``build_model`` prepares for allcand: answer tokens and masks in chunks."""
    dictionary = task.target_dictionary
    tokens = [dictionary.encode_line(task.bpe.encode(" " + a), add_if_not_exist=False, append_eos=False).long()
              for a in answers]
    trie = trie_class(dictionary.eos())
    for answer in tokens:
        trie.insert([dictionary.bos()] + answer.tolist() + [dictionary.eos()])
    masks = []
    for answer in tokens:
        mask = torch.zeros(len(answer) + 1, len(dictionary), dtype=torch.bool)
        for t in range(len(answer) + 1):
            mask[t][trie.get_next_layer([dictionary.bos()] + answer[:t].tolist())] = True
        masks.append(mask)
    return types.SimpleNamespace(
        src_dict=dictionary, tgt_dict=dictionary, index2ans=dict(enumerate(answers)),
        valid_answers_list=[tokens[i:i + per_pass] for i in range(0, len(tokens), per_pass)],
        valid_constraint_masks_list=[masks[i:i + per_pass] for i in range(0, len(masks), per_pass)])


def make_sample(task, batch: int, image_size: int) -> Dict:
    """VQA batches with OFA's ``prev_output`` prompts (the source without its eos)."""
    from fairseq.data import data_utils

    dictionary = task.source_dictionary
    sources = []
    for b in range(batch):
        text = dictionary.encode_line(task.bpe.encode(QUESTIONS[b % len(QUESTIONS)]), add_if_not_exist=False,
                                      append_eos=False).long()
        sources.append(torch.cat([torch.tensor([dictionary.bos()]), text, torch.tensor([dictionary.eos()])]))
    src = data_utils.collate_tokens(sources, dictionary.pad(), left_pad=False)
    images = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(IMAGE_SEED))
    return {
        "id": torch.arange(batch),
        "net_input": {"src_tokens": src, "src_lengths": src.ne(dictionary.pad()).sum(1), "patch_images": images,
                      "patch_masks": torch.ones(batch, dtype=torch.bool)},
        "decoder_prompts": [s[:-1].tolist() for s in sources],
        "ref_dict": [{} for _ in range(batch)],
    }


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    options = parse_command_line(argv)
    check_ofa_dir(options.ofa_dir)
    check_json_path(options.json)
    torch.set_num_threads(options.threads)
    with tempfile.TemporaryDirectory() as scratch:
        ofa_args, ofa_task, ofa_model = build_ofa(options.ofa_dir, Path(scratch), options.arch, options.image_size,
                                                  VQA_MODEL_FLAGS)
        eval_vqa_gen = ofa_eval_vqa_gen(options.ofa_dir)
        answers = candidate_answers(ofa_task, options.candidates)
        ofa_lists = ofa_candidate_lists(ofa_task, answers, options.per_pass, ofa_trie_class(options.ofa_dir))
        ours = build_ours(ofa_args, ofa_task, ofa_model)
    from ofa_el.data.candidates import CandidateSet
    from ofa_el.tasks.candidate_scoring import score_candidates

    class Codec:  # what CandidateSet reads of a TextCodec: OFA's own BPE and dictionary
        dictionary = ofa_task.target_dictionary

        @staticmethod
        def encode(text):
            return Codec.dictionary.encode_line(ofa_task.bpe.encode(text), add_if_not_exist=False,
                                                append_eos=False).long()

    candidates = CandidateSet(answers, Codec())
    sample = make_sample(ofa_task, options.batch, options.image_size)
    prompts = [torch.tensor(p) for p in sample["decoder_prompts"]]
    our_per_pass = options.our_per_pass or options.per_pass

    def run_ofa():
        with torch.no_grad():
            return [r["answer"] for r in eval_vqa_gen(ofa_lists, None, [ofa_model], sample,
                                                      beam_search_vqa_eval=False)[0]]

    def run_ours():
        scores = score_candidates(ours, sample["net_input"], prompts, candidates, our_per_pass)
        return [answers[i] for i in scores.argmax(1).tolist()]

    timings = {"ofa": [], "ours": []}
    for round_index in range(options.rounds):
        order = [("ofa", run_ofa), ("ours", run_ours)]
        picked = {}
        for name, call in order if round_index % 2 == 0 else reversed(order):
            start = time.perf_counter()
            picked[name] = call()
            timings[name].append(time.perf_counter() - start)
        if picked["ofa"] != picked["ours"]:  # checked on every timed round: no untimed warm-up run is needed
            raise SystemExit(f"answers differ: OFA {picked['ofa']}, ours {picked['ours']}")
    medians = {name: statistics.median(values) for name, values in timings.items()}
    result = {"arch": options.arch, "batch": options.batch, "candidates": options.candidates,
              "per_pass": options.per_pass, "our_per_pass": our_per_pass, "image_size": options.image_size,
              "threads": options.threads, "rounds": options.rounds, "identical_answers": True,
              "load_average_at_end": os.getloadavg(), "seconds": timings, "median_s": medians,
              "speedup": medians["ofa"] / medians["ours"]}
    print(f"{options.arch}, {options.batch} questions x {options.candidates} candidates, {options.per_pass} per pass "
          f"(ours {our_per_pass}), "
          f"{options.image_size} px, {options.threads} threads, same answers: OFA eval_vqa_gen "
          f"{medians['ofa']:.2f} s, ours {medians['ours']:.2f} s (median of {options.rounds}): "
          f"{result['speedup']:.1f}x faster")
    if options.json:
        options.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        sys.exit(f"error: {err}")
