"""The caption and refcoco tasks on generated demo data: loading, batching, CIDEr table, box decoding."""
import subprocess
import sys

import pytest
import torch
from fairseq import options, tasks
from fairseq.sequence_generator import SequenceGenerator
from pycocoevalcap.cider.cider import Cider

import ofa_el  # noqa: F401
from ofa_el.data.dictionary import bin_token_range
from ofa_el.data.scoring import cider
from ofa_el.tasks.refcoco import RestrictedOutputModel


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    subprocess.run([sys.executable, "-m", "ofa_el.tools.make_demo_data", "--out", str(out), "--seed", "3",
                    "--train-images", "24", "--val-images", "10", "--test-images", "6",
                    "--refcoco-train-images", "12", "--refcoco-eval-images", "8", "--image-size", "48"],
                   check=True, capture_output=True)
    return out


def setup(task_name, demo_data, files, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        ",".join(str(demo_data / f) for f in files), "--task", task_name, "--bpe-dir", str(demo_data / "bpe"),
        "--arch", "transformer", "--patch-image-size", "48", "--batch-size", "4", *extra])
    return tasks.setup_task(args), args


def test_caption_batches_reshuffle_per_epoch(demo_data):
    task, _ = setup("caption", demo_data, ["caption_stage1_train.tsv", "caption_val.tsv"])
    task.load_dataset("train")
    dataset = task.dataset("train")
    assert len(dataset) == 24 * 5
    first = [b.tolist() for b in task.get_batch_iterator(dataset, max_sentences=4, epoch=1).frozen_batches]
    second = [b.tolist() for b in task.get_batch_iterator(dataset, max_sentences=4, epoch=2).frozen_batches]
    assert len(first) == 30 and all(len(b) == 4 for b in first)
    assert sorted(sum(first, [])) == list(range(120)) and first != second
    sample = dataset.collater([dataset[i] for i in first[0]])
    assert sample["net_input"]["patch_images"].shape == (4, 3, 48, 48)


def test_train_step_passes_the_update_count_to_criteria_that_take_it(demo_data):
    """Stock fairseq's train_step calls criterion(model, sample); without the count, --drop-*-after could never
    pass. Criteria without an update_num parameter are called as fairseq calls them."""
    task, _ = setup("caption", demo_data, ["caption_stage1_train.tsv", "caption_val.tsv"])
    seen = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(2))

        def set_num_updates(self, num_updates):  # fairseq's train_step tells the model too
            pass

    class Counting(torch.nn.Module):
        def forward(self, model, sample, update_num=None, reduce=True):
            seen.append(update_num)
            return model.weight.sum(), 1, {}

    class Plain(torch.nn.Module):
        def forward(self, model, sample):
            seen.append("plain")
            return model.weight.sum(), 1, {}

    class Optimizer:
        def backward(self, loss):
            loss.backward()

    model = Model()
    task.train_step({}, model, Counting(), Optimizer(), update_num=7)
    task.train_step({}, model, Plain(), Optimizer(), update_num=8)
    assert seen == [7, "plain"] and model.weight.grad.tolist() == [2.0, 2.0]


def test_caption_keep_row_order_reads_the_file_in_order(demo_data):
    task, _ = setup("caption", demo_data, ["caption_stage1_train.tsv", "caption_val.tsv"], "--keep-row-order")
    task.load_dataset("train")
    batches = task.get_batch_iterator(task.dataset("train"), max_sentences=4, epoch=2).frozen_batches
    assert [b.tolist() for b in batches][:2] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_cider_over_the_validation_table_is_additive(demo_data):
    task, _ = setup("caption", demo_data, ["caption_stage1_train.tsv", "caption_val.tsv"], "--eval-cider")
    table = task.validation_document_frequency()
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    samples = [dataset[i] for i in range(len(dataset))]
    hypotheses = ["a red circle", "a blue square on the left", "two shapes", "", "a green triangle"] * 2
    records = [(s["id"], hyp, s["references"]) for s, hyp in zip(samples, hypotheses)]
    whole, _ = cider(records, document_frequency=table)
    _, first = cider(records[:4], document_frequency=table)
    _, rest = cider(records[4:], document_frequency=table)
    assert (sum(first.values()) + sum(rest.values())) / len(records) == pytest.approx(whole, rel=1e-9)
    references = {i: r[2] for i, r in enumerate(records)}
    direct, _ = Cider().compute_score(references, {i: [r[1]] for i, r in enumerate(records)})
    assert whole == pytest.approx(direct, rel=1e-9)  # the table is the validation set's own


def test_cider_table_is_read_when_validation_loads_not_when_the_model_is_built(demo_data, tmp_path):
    """Evaluating a checkpoint whose stored table is elsewhere builds its task and model; training, which loads the
    validation split first, stops there on a missing table, before any update."""
    missing = tmp_path / "coco-valid-words.p"
    task, args = setup("caption", demo_data, ["caption_stage1_train.tsv", "caption_val.tsv"], "--eval-cider",
                       "--eval-cider-cached-tokens", str(missing), "--arch", "ofa_tiny", "--encoder-layers", "1",
                       "--decoder-layers", "1", "--resnet-type", "resnet18", "--code-dict-size", "0")
    task.build_model(args)
    task.load_dataset("test")
    with pytest.raises(FileNotFoundError, match="--eval-cider-cached-tokens: file not found: .*coco-valid-words.p"):
        task.load_dataset("valid")


def test_missing_files_are_named(demo_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.tsv"):
        task, _ = setup("caption", demo_data, ["caption_stage1_train.tsv", "nowhere.tsv"])
        task.load_dataset("valid")
    (tmp_path / "bpe").mkdir()
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        (tmp_path / "bpe" / "dict.txt").write_text((demo_data / "bpe" / "dict.txt").read_text())
        setup("caption", tmp_path, ["a.tsv", "b.tsv"])


@pytest.mark.parametrize("restricted", [True, False])
def test_box_decoding_is_restricted_to_bins(demo_data, restricted):
    extra = [] if restricted else ["--unrestricted-decoding"]
    task, args = setup("refcoco", demo_data, ["refcoco_train.tsv", "refcoco_val.tsv"], "--encoder-layers", "1",
                       "--decoder-layers", "1", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
                       "--encoder-ffn-embed-dim", "16", "--decoder-ffn-embed-dim", "16",
                       "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", *extra)
    torch.manual_seed(0)
    model = task.build_model(args).eval()
    allowed = task.allowed_box_tokens()
    decoding_model = model if not restricted else RestrictedOutputModel(model, allowed)
    generator = SequenceGenerator([decoding_model], task.target_dictionary, beam_size=2, min_len=4, max_len_b=4,
                                  max_len_a=0)
    src = torch.randint(4, 300, (3, 7))
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.full((3,), 7)}}
    hypotheses = generator.generate([decoding_model], sample, bos_token=task.target_dictionary.bos())
    start, end = bin_token_range(task.target_dictionary, task.cfg.num_bins)
    tokens = [t for hyps in hypotheses for t in hyps[0]["tokens"].tolist()[:4]]
    inside = [start <= t < end for t in tokens]
    assert all(len(hyps[0]["tokens"]) == 5 for hyps in hypotheses)
    assert all(inside) if restricted else not all(inside)  # a random model picks words without the restriction
