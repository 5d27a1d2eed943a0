"""--no-repeat-ngram-size blocks repeats: fairseq 0.12's Python blocker (used without its CUDA extension, which
ve-fairseq does not ship) compares padding and never blocks; the tasks' generators use one that does."""
from argparse import Namespace

import pytest
import torch
from fairseq import options
from fairseq.data import Dictionary
from fairseq.ngram_repeat_block import NGramRepeatBlock
from fairseq.sequence_generator import SequenceGenerator

from ofa_el.models.ofa.model import OFAModel
from ofa_el.tasks.ngram_blocking import NGramRepeatBlocker, fix_ngram_blocking
from ofa_el.tasks.ofa_task import OFATask, OFATaskConfig

VOCAB = 40


def banned_by_definition(hypothesis, step, n):
    """Tokens that would complete an n-gram already in positions 0..step of one hypothesis."""
    prefix = hypothesis[step + 2 - n: step + 1]
    return {hypothesis[i + n - 1] for i in range(step + 2 - n) if hypothesis[i:i + n - 1] == prefix}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_bans_exactly_the_tokens_that_repeat_an_ngram(n):
    g = torch.Generator().manual_seed(n)
    for step in range(12):
        tokens = torch.randint(4, 8, (6, 20), generator=g)  # few symbols: many repeats
        tokens[:, step + 1:] = 1  # padding past the current step, as in fairseq's buffer
        lprobs = torch.zeros(6, VOCAB)
        NGramRepeatBlocker(n)(tokens, lprobs, bsz=3, beam_size=2, step=step)
        for row in range(6):
            banned = set(torch.nonzero(lprobs[row] == float("-inf")).flatten().tolist())
            assert banned == banned_by_definition(tokens[row].tolist(), step, n), (n, step, row)


def test_fairseqs_python_blocker_never_blocks():
    """The defect this module exists for: the same repeated bigram is not banned by fairseq 0.12 on its Python path."""
    tokens = torch.tensor([[0, 5, 6, 5, 1, 1, 1]])  # "5 6 5" so far (step 3): 6 would repeat the bigram "5 6"
    stock, ours = torch.zeros(1, VOCAB), torch.zeros(1, VOCAB)
    NGramRepeatBlock(2, use_extension=False)(tokens, stock, 1, 1, 3)
    NGramRepeatBlocker(2)(tokens, ours, 1, 1, 3)
    assert not torch.isinf(stock).any()
    assert torch.isinf(ours[0, 6]) and torch.isinf(ours).sum() == 1


class Task:
    def __init__(self):
        self.source_dictionary = self.target_dictionary = Dictionary()
        for i in range(VOCAB - len(self.source_dictionary)):
            self.source_dictionary.add_symbol(f"w{i}")


def repetitive_model():
    """A tiny OFA model that wants to say token 7 at every step."""
    args = options.parse_args_and_arch(options.get_training_parser(), [
        "/dev/null", "--arch", "ofa_tiny", "--task", "translation", "--encoder-embed-dim", "32",
        "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
        "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", "--resnet-type", "resnet18"])
    torch.manual_seed(0)
    model = OFAModel.build_model(args, Task()).eval()
    with torch.no_grad():
        model.decoder.embed_tokens.weight[7] *= 30
    return model


def generate(generator, model):
    g = torch.Generator().manual_seed(0)
    sample = {"net_input": {"src_tokens": torch.randint(4, VOCAB, (2, 5), generator=g),
                            "src_lengths": torch.full((2,), 5), "patch_images": torch.randn(2, 3, 32, 32, generator=g),
                            "patch_masks": torch.ones(2, dtype=torch.bool)}}
    return [hyp["tokens"].tolist() for hyps in generator.generate([model], sample, bos_token=0) for hyp in hyps]


def repeated_trigrams(tokens):
    trigrams = [tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)]
    return len(trigrams) - len(set(trigrams))


def test_generation_has_no_repeated_ngram_once_fixed():
    model = repetitive_model()
    options = dict(beam_size=3, max_len_b=10, min_len=10, no_repeat_ngram_size=3)
    stock = generate(SequenceGenerator([model], model.encoder.dictionary, **options), model)
    assert any(repeated_trigrams(tokens) for tokens in stock)  # fairseq's blocker let repeats through
    fixed = generate(fix_ngram_blocking(SequenceGenerator([model], model.encoder.dictionary, **options)), model)
    assert all(repeated_trigrams(tokens) == 0 for tokens in fixed)


def test_the_tasks_build_generators_that_block():
    task = OFATask(OFATaskConfig(), codec=Namespace(dictionary=Task().target_dictionary))
    generator = task.build_generator([repetitive_model()], Namespace(beam=3, no_repeat_ngram_size=3))
    assert isinstance(generator.repeat_ngram_blocker, NGramRepeatBlocker)
    assert generator.repeat_ngram_blocker.no_repeat_ngram_size == 3
    assert task.build_generator([repetitive_model()], Namespace(beam=3)).repeat_ngram_blocker is None
