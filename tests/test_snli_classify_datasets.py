"""SNLI-VE and image-classification datasets: OFA's token layout, masks, transforms and bad rows."""
import torch
import pytest

from ofa_el.data.augment import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, eval_transform
from ofa_el.data.candidates import CandidateSet
from ofa_el.data.image_classify_dataset import IMAGE_CLASSIFY_PROMPT, ImageClassifyDataset
from ofa_el.data.ofa_dataset import decode_image
from ofa_el.data.snli_ve_dataset import SNLI_VE_CANDIDATES, SnliVeDataset
from ofa_el.data.text import TextCodec
from ofa_el.data.tsv import InvalidRowError
from ofa_el.synthetic.image_classify import DEMO_CLASSES

torch.set_num_threads(1)
P = 16


@pytest.fixture(scope="module")
def codec(demo_data):
    return TextCodec(str(demo_data / "bpe"), num_bins=16)


def rows(path):
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("prompt_type", ["none", "src", "prev_output"])
def test_snli_ve_sample_layout(demo_data, codec, prompt_type):
    candidates = CandidateSet(list(SNLI_VE_CANDIDATES), codec)
    dataset = SnliVeDataset(str(demo_data / "snli_ve_dev.tsv"), "valid", codec, patch_image_size=P, add_caption=True,
                            candidates=candidates, prompt_type=prompt_type)
    row = rows(demo_data / "snli_ve_dev.tsv")[0]
    answer = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}[row[5]]
    sample = dataset[0]
    d = codec.dictionary
    source = torch.cat([torch.tensor([d.bos()]),
                        codec.encode(f' can image and text1 " {row[4]} " imply text2 " {row[3]} "?'),
                        torch.tensor([d.eos()])])
    assert torch.equal(sample["source"], source)
    answer_tokens = codec.encode(" " + answer)
    prompt = {"none": source[:1], "src": source, "prev_output": source[:-1]}[prompt_type]
    assert torch.equal(sample["prev_output_tokens"], torch.cat([prompt, answer_tokens]))
    expected_target = torch.cat([torch.full((len(prompt) - 1,), d.pad()), answer_tokens, torch.tensor([d.eos()])])
    assert torch.equal(sample["target"], expected_target)
    assert sample["id"] == row[0] and sample["ref_dict"] == {answer: 1.0}
    mask = sample["constraint_mask"]
    assert mask.shape == (len(expected_target), len(d))
    first = len(prompt) - 1  # the first answer position may start any of the three answers
    assert set(mask[first].nonzero().flatten().tolist()) == {int(c[0]) for c in candidates.tokens}
    assert mask[-1].nonzero().flatten().tolist() == [d.eos()]  # after a whole answer: only eos
    assert sample["patch_image"].shape == (3, P, P)


def test_snli_ve_answer_outside_the_candidates_is_a_row_error(demo_data, codec):
    path = demo_data / "snli_ve_train.tsv"
    labels = [row[5] for row in rows(path)]
    dataset = SnliVeDataset(str(path), "train", codec, patch_image_size=P,
                            candidates=CandidateSet(["no", "yes"], codec))
    neutral = labels.index("neutral")
    with pytest.raises(InvalidRowError, match=rf"{path}: row {neutral + 1}: label column: answer 'maybe' is not one "
                                              r"of the candidates \(no, yes; --ans2label-dict\)"):
        dataset[neutral]


def classify_dataset(demo_data, codec, split, name, **kwargs):
    return ImageClassifyDataset(str(demo_data / name), split, codec, CandidateSet(list(DEMO_CLASSES), codec),
                                patch_image_size=P, **kwargs)


def test_classify_sample_layout_and_eval_transform(demo_data, codec):
    dataset = classify_dataset(demo_data, codec, "valid", "image_classify_val.tsv", imagenet_default_mean_and_std=True)
    table = rows(demo_data / "image_classify_val.tsv")
    sample = dataset[2]
    d = codec.dictionary
    class_tokens = codec.encode(" " + table[2][2])
    assert sample["id"] == 2 and sample["ref_dict"] == {table[2][2]: 1.0}
    assert torch.equal(sample["source"], torch.cat([torch.tensor([d.bos()]), codec.encode(IMAGE_CLASSIFY_PROMPT),
                                                    torch.tensor([d.eos()])]))
    assert torch.equal(sample["prev_output_tokens"], torch.cat([torch.tensor([d.bos()]), class_tokens]))
    assert torch.equal(sample["target"], torch.cat([class_tokens, torch.tensor([d.eos()])]))
    expected = eval_transform(decode_image(table[2][0]), P, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    assert torch.equal(sample["patch_image"], expected) and torch.equal(dataset[2]["patch_image"], expected)
    ofa_range = classify_dataset(demo_data, codec, "valid", "image_classify_val.tsv")[2]["patch_image"]
    assert ofa_range.min() >= -1 and ofa_range.max() <= 1 and not torch.equal(ofa_range, expected)
    batch = dataset.collater([dataset[0], dataset[1]])
    assert batch["constraint_masks"].shape[0] == 2 and batch["ref_dict"][1] == {table[1][2]: 1.0}


def test_classify_training_images_are_augmented(demo_data, codec):
    dataset = classify_dataset(demo_data, codec, "train", "image_classify_train.tsv", augmentation_backend="pil")
    assert dataset.train_transform.backend.startswith("ofa_el PIL")
    torch.manual_seed(0)
    draws = [dataset[0]["patch_image"] for _ in range(4)]
    assert all(d.shape == (3, P, P) for d in draws)
    assert len({tuple(d.flatten().tolist()) for d in draws}) > 1  # random crops, flips, ops


def test_classify_training_without_augmentation_is_the_eval_transform(demo_data, codec):
    dataset = classify_dataset(demo_data, codec, "train", "image_classify_train.tsv", train_augmentation="none",
                               imagenet_default_mean_and_std=True)
    assert dataset.train_transform is None
    first_image = decode_image(rows(demo_data / "image_classify_train.tsv")[0][0])
    expected = eval_transform(first_image, P, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    assert all(torch.equal(dataset[0]["patch_image"], expected) for _ in range(3))


def test_classify_unknown_train_augmentation_names_the_option(demo_data, codec):
    with pytest.raises(ValueError, match=r"--train-augmentation 'colour': expected one of ofa, none"):
        classify_dataset(demo_data, codec, "train", "image_classify_train.tsv", train_augmentation="colour")


def test_imagenet_recipes_keep_ofa_augmentation_and_only_the_demo_turns_it_off():
    from ofa_el.recipes import REPO_ROOT, load_recipe

    for name in ("imagenet_ce.yaml", "imagenet_el.yaml"):
        path = REPO_ROOT / "configs" / "image_classify" / name
        assert "train-augmentation" not in load_recipe(path)["args"]
        assert load_recipe(path, demo=True)["args"]["train-augmentation"] == "none"
