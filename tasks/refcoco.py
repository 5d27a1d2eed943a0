"""Task ``refcoco``: visual grounding (RefCOCO, RefCOCO+, RefCOCOg) with Acc@0.5 validation.

The target is the box as four ``<bin_i>`` tokens. OFA's published scripts let the decoder
emit any token there (a word decodes to a meaningless coordinate); here decoding is
restricted to bin tokens by default, independently of the criterion's
``--constraint-range`` (which would also change the training loss). ``--unrestricted-decoding``
reproduces OFA.
"""
import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq import metrics
from fairseq.tasks import register_task

from ..data.boxes import bins_to_box, box_iou, grounding_hits
from ..data.dictionary import bin_token_range
from ..data.refcoco_dataset import RefcocoDataset
from .ofa_task import OFATask, OFATaskConfig

logger = logging.getLogger(__name__)


@dataclass
class RefcocoConfig(OFATaskConfig):
    eval_acc: bool = field(default=False, metadata={"help": "score validation boxes with Acc@0.5 (logged as score)"})
    max_image_size: Optional[int] = field(
        default=None, metadata={"help": "box coordinates are normalised by this size before binning; default: "
                                        "--patch-image-size (OFA: 512, which equals it in the published recipes)"})
    unrestricted_decoding: bool = field(
        default=False, metadata={"help": "let the decoder emit any token as a coordinate, as OFA's scripts do"})


class RestrictedOutputModel(torch.nn.Module):
    """A model whose output distribution only covers ``allowed`` ids (renormalised over them).

    fairseq's SequenceGenerator asks each model for ``get_normalized_probs``; masking the
    logits there, before the softmax, restricts the search without copying the generator.
    """

    def __init__(self, model: torch.nn.Module, allowed: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("blocked", ~allowed, persistent=False)

    @property
    def encoder(self):
        return self.model.encoder

    @property
    def decoder(self):
        return self.model.decoder

    def max_decoder_positions(self):
        return self.model.max_decoder_positions()

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None):
        logits = net_output[0].masked_fill(self.blocked.to(net_output[0].device), float("-inf"))
        return self.model.get_normalized_probs((logits,) + tuple(net_output[1:]), log_probs, sample)


@register_task("refcoco", dataclass=RefcocoConfig)
class RefcocoTask(OFATask):
    cfg: RefcocoConfig

    def build_dataset(self, path: str, split: str):
        options = self.dataset_options(split)
        return RefcocoDataset(path, split, self.codec, max_src_length=self.cfg.max_src_length,
                              num_bins=self.cfg.num_bins, max_image_size=self.max_image_size, **options)

    @property
    def max_image_size(self) -> int:
        return self.cfg.max_image_size or self.cfg.patch_image_size

    def allowed_box_tokens(self) -> torch.Tensor:
        """Bins, and eos to end the 4-token box."""
        start, end = bin_token_range(self.dictionary, self.cfg.num_bins)
        allowed = torch.zeros(len(self.dictionary), dtype=torch.bool)
        allowed[start:end] = True
        allowed[self.dictionary.eos()] = True
        return allowed

    def box_generator(self, model, generation_args=None):
        """A generator (``--eval-args`` unless given) over bins only, unless ``--unrestricted-decoding``."""
        decoding_model = model if self.cfg.unrestricted_decoding else RestrictedOutputModel(
            model, self.allowed_box_tokens())
        args = generation_args if generation_args is not None else self.generation_args()
        return self.build_generator([decoding_model], args), decoding_model

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if self.cfg.eval_acc:
            self.generator, self.decoding_model = self.box_generator(model)
        return model

    def predicted_boxes(self, generator, decoding_model, sample) -> torch.Tensor:
        """[B, 4] boxes in original-image pixels; a non-bin token becomes a NaN coordinate."""
        start, _ = bin_token_range(self.dictionary, self.cfg.num_bins)
        rows = []
        for tokens in self.hypotheses(generator, decoding_model, sample):
            bins = [t - start if 0 <= t - start < self.cfg.num_bins else float("nan") for t in tokens[:4]]
            rows.append(bins + [float("nan")] * (4 - len(bins)))
        bins = torch.tensor(rows, dtype=torch.float32)
        return bins_to_box(bins, self.cfg.num_bins, self.max_image_size,
                           sample["w_resize_ratios"].float().cpu(), sample["h_resize_ratios"].float().cpu())

    def valid_step(self, sample, model, criterion):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if self.cfg.eval_acc and sample:
            boxes = self.predicted_boxes(self.generator, self.decoding_model, sample)
            target = sample["region_coords"].float().cpu()
            iou = torch.nan_to_num(box_iou(boxes, target), nan=0.0)
            logging_output["_score_sum"] = float(grounding_hits(boxes, target).sum())
            logging_output["_iou_sum"] = float(iou.sum())
            logging_output["_score_cnt"] = len(iou)
            self.maybe_print_sample(sample, boxes[0].tolist(), sample["region_coords"][0].tolist())
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        count = self.sum_logging_outputs(logging_outputs, "_score_cnt")
        if count > 0:
            for key in ("_score_sum", "_iou_sum", "_score_cnt"):
                metrics.log_scalar(key, self.sum_logging_outputs(logging_outputs, key))
            metrics.log_derived("score", lambda m: round(m["_score_sum"].sum / m["_score_cnt"].sum, 4))
            metrics.log_derived("miou", lambda m: round(m["_iou_sum"].sum / m["_score_cnt"].sum, 4))
            # how many rows were scored, over all workers: the whole validation set, each row once
            metrics.log_derived("scored", lambda m: int(m["_score_cnt"].sum))
