"""The collater names what it emits: per-sample extras reach the batch under declared names, and a dataset's
per-sample ``conf`` reaches the criterion as ``conf`` and weights training."""
import base64
import io

import pytest
import torch
from fairseq.criterions import CRITERION_DATACLASS_REGISTRY, build_criterion
from omegaconf import OmegaConf
from PIL import Image

from ofa_el.data.caption_dataset import CaptionDataset
from ofa_el.data.ofa_dataset import collate
from ofa_el.data.refcoco_dataset import RefcocoDataset
from ofa_el.data.text import TextCodec

P = 16


@pytest.fixture(scope="module")
def codec(demo_data):
    return TextCodec(str(demo_data / "bpe"), num_bins=100)


def image_b64(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_rows(path, rows):
    path.write_text("".join("\t".join(row) + "\n" for row in rows))
    return str(path)


class WeightedCaptions(CaptionDataset):
    """A caption dataset that, like OFA's VQA, gives each sample a confidence."""

    def __init__(self, *args, confidences, **kwargs):
        super().__init__(*args, **kwargs)
        self.confidences = confidences

    def build_sample(self, index, fields):
        sample = super().build_sample(index, fields)
        sample["conf"] = torch.tensor(self.confidences[index])
        return sample


@pytest.fixture
def weighted(codec, tmp_path):
    path = write_rows(tmp_path / "train.tsv", [
        ("1", "7", "a red square", "x", image_b64((200, 0, 0))),
        ("2", "7", "a blue circle at the top", "x", image_b64((0, 0, 200))),
        ("3", "7", "a green one", "x", image_b64((0, 200, 0)))])

    def make(confidences):
        return WeightedCaptions(path, "train", codec, patch_image_size=P, slice_id=0, slice_count=1,
                                confidences=confidences)
    return make


def test_conf_reaches_the_batch_as_conf(weighted):
    dataset = weighted([0.0, 1.0, 0.5])
    batch = dataset.collater([dataset[i] for i in range(3)])
    assert torch.equal(batch["conf"], torch.tensor([0.0, 1.0, 0.5])) and "confs" not in batch


def test_refcoco_and_caption_keep_ofas_batch_names(codec, tmp_path):
    grounding = RefcocoDataset(write_rows(tmp_path / "r.tsv", [("1", "7", "the red one", "1,1,10,8",
                                                                   image_b64((200, 0, 0)))]),
                               "valid", codec, patch_image_size=P, num_bins=100, slice_id=0, slice_count=1)
    batch = grounding.collater([grounding[0]])
    assert {"w_resize_ratios", "h_resize_ratios", "region_coords"} <= set(batch)
    assert torch.equal(batch["region_coords"], torch.tensor([[1.0, 1.0, 10.0, 8.0]]))
    captions = CaptionDataset(write_rows(tmp_path / "c.tsv", [("1", "7", "a red one&&a square", "x",
                                                                 image_b64((200, 0, 0)))]),
                              "valid", codec, patch_image_size=P, slice_id=0, slice_count=1)
    assert captions.collater([captions[0]])["references"] == [["a red one", "a square"]]


def test_an_undeclared_sample_key_is_an_error(weighted):
    dataset = weighted([1.0, 1.0, 1.0])
    sample = dataset[0]
    sample["confidence"] = torch.tensor(1.0)
    with pytest.raises(ValueError, match=r"sample keys \['confidence'\] have no batch name"):
        collate([sample], dataset.dictionary.pad(), dataset.dictionary.eos(), dataset.BATCH_EXTRAS)


class BagOfTokensModel(torch.nn.Module):
    """Logits from the previous token and the image's mean colour: enough to train on an OFA batch."""

    def __init__(self, vocab):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, 8)
        self.image = torch.nn.Linear(3, 8)
        self.out = torch.nn.Linear(8, vocab)

    def forward(self, src_tokens, src_lengths, patch_images, patch_masks, prev_output_tokens):
        colour = self.image(patch_images.mean(dim=(2, 3)))[:, None, :]
        return self.out(torch.tanh(self.embed(prev_output_tokens) + colour)), {}

    def get_targets(self, sample, net_output):
        return sample["target"]


class Task:
    def __init__(self, dictionary):
        self.target_dictionary = dictionary


def el_criterion(dictionary):
    name = "adjust_label_smoothed_encouraging_loss"
    cfg = CRITERION_DATACLASS_REGISTRY[name]()
    cfg._name, cfg.label_smoothing, cfg.log_end, cfg.sentence_avg = name, 0.1, 0.75, False
    return build_criterion(OmegaConf.structured(cfg), Task(dictionary))


def train_step(model, criterion, batch):
    """One SGD step; returns the loss and how far every parameter moved."""
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    optimizer.zero_grad()
    loss, _, _ = criterion(model, batch)
    loss.backward()
    optimizer.step()
    return loss.item(), sum((p.detach() - b).abs().sum().item() for p, b in zip(model.parameters(), before))


def test_sample_weights_act_in_training(weighted):
    ignored = weighted([0.0, 0.0, 0.0])
    criterion = el_criterion(ignored.dictionary)
    batch = ignored.collater([ignored[i] for i in range(3)])
    loss, moved = train_step(BagOfTokensModel(len(ignored.dictionary)), criterion, batch)
    assert loss == 0.0 and moved == 0.0  # every sample weighted 0: nothing to learn

    only_second = weighted([0.0, 1.0, 0.0])
    batch = only_second.collater([only_second[i] for i in range(3)])
    alone = only_second.collater([only_second[1]])
    alone["conf"] = torch.tensor([1.0])
    model_a, model_b = BagOfTokensModel(len(ignored.dictionary)), BagOfTokensModel(len(ignored.dictionary))
    loss_batch, moved = train_step(model_a, criterion, batch)
    loss_alone, _ = train_step(model_b, criterion, alone)
    assert moved > 0 and loss_batch == pytest.approx(loss_alone, rel=1e-6)  # the zero-weight rows add nothing
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.allclose(a, b, atol=1e-6)  # the same update as training on the weighted row alone
