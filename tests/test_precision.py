"""``--bf16`` through the training entry point: bfloat16 on CPU/CUDA instead of fairseq 0.12's TPU mode, a recipe's
``--fp16`` replaced, a GPU without bfloat16 refused; a few CPU updates in bfloat16 with the fused EL in float32."""
import argparse
import json
import math

import pytest
import torch

from ofa_el import precision
from ofa_el.criterions import adjust_label_smoothed_cross_entropy as criterion_module
from ofa_el.tools import train
from ofa_el.tools.errors import UserError

TINY = ["--task", "caption", "--arch", "ofa_tiny", "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
        "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
        "--resnet-type", "resnet18", "--patch-image-size", "32", "--code-dict-size", "0", "--num-bins", "10",
        "--criterion", "adjust_label_smoothed_encouraging_loss", "--log-end", "1.0", "--optimizer", "adam",
        "--lr", "1e-3", "--batch-size", "2", "--max-update", "4", "--cpu", "--num-workers", "0",
        "--disable-validation", "--ignore-unused-valid-subsets", "--keep-row-order", "--log-format", "json",
        "--log-interval", "1", "--no-epoch-checkpoints"]


def test_bf16_replaces_the_recipes_fp16_flags():
    messages = []
    argv = ["data", "--fp16", "--fp16-scale-window", "512", "--bf16"]
    assert precision.prefer_bf16(argv, log=messages.append) == ["data", "--fp16-scale-window", "512", "--bf16"]
    assert messages and "--fp16 dropped" in messages[0]
    assert precision.prefer_bf16(["data", "--memory-efficient-fp16", "--bf16"], log=messages.append) == \
        ["data", "--bf16", "--memory-efficient-bf16"]
    assert precision.prefer_bf16(["data", "--fp16"], log=messages.append) == ["data", "--fp16"]  # no --bf16


def test_gpu_without_bfloat16_is_refused_with_the_fix():
    names = {0: "NVIDIA A100", 1: "Tesla V100-SXM2-32GB"}
    capabilities = {0: (8, 0), 1: (7, 0)}
    precision.check_bf16_device(1, capabilities.get, names.get)  # the A100 alone is fine
    with pytest.raises(UserError, match=r"GPU 1 \(Tesla V100-SXM2-32GB, compute capability 7\.0\).*--fp16"):
        precision.check_bf16_device(2, capabilities.get, names.get)


def test_parsed_bf16_no_longer_means_tpu():
    from fairseq import options

    parser = options.get_training_parser()
    with precision.cuda_bfloat16(["--bf16"]):
        args = options.parse_args_and_arch(parser, ["/dev/null", "--bf16", "--cpu", "--arch", "transformer",
                                                    "--task", "translation"])
    assert args.bf16 and not args.tpu
    assert options.parse_args_and_arch.__name__ == "parse_args_and_arch"  # fairseq's own parser is back
    with precision.cuda_bfloat16(["--bf16", "--tpu"]):  # an explicit --tpu keeps fairseq's meaning
        args = options.parse_args_and_arch(options.get_training_parser(),
                                           ["/dev/null", "--bf16", "--tpu", "--arch", "transformer",
                                            "--task", "translation"])
    assert args.tpu


def test_bf16_trains_on_cpu_through_the_entry_point(demo_data, tmp_path, monkeypatch, capsys, caplog):
    """A recipe's --fp16 plus --bf16: four updates with the model in bfloat16 (its logits are), float32 optimizer
    state (fairseq's half-precision optimizer), no loss scaler, finite losses, and the fused EL's per-token
    values computed in float32."""
    seen = []
    fused = criterion_module.fused_token_losses

    def recording(logits, *args, **kwargs):
        out = fused(logits, *args, **kwargs)
        seen.append((logits.dtype, out.loss.dtype))
        return out

    monkeypatch.setattr(criterion_module, "fused_token_losses", recording)
    monkeypatch.setattr("sys.argv", ["ofa_el.tools.train"])
    save_dir = tmp_path / "checkpoints"
    train.main([f"{demo_data}/caption_stage1_train.tsv,{demo_data}/caption_val.tsv", "--bpe-dir",
                str(demo_data / "bpe"), *TINY, "--fp16", "--bf16", "--save-dir", str(save_dir)])
    assert "--fp16 dropped" in capsys.readouterr().err
    logged = [json.loads(record.getMessage()) for record in caplog.records
              if record.getMessage().startswith('{"epoch"')]  # fairseq's json progress lines
    losses = [float(stats["loss"]) for stats in logged if "loss" in stats and "num_updates" in stats]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses), logged
    assert seen and all(dtypes == (torch.bfloat16, torch.float32) for dtypes in seen), seen
    state = torch.load(save_dir / "checkpoint_last.pt", weights_only=False)
    assert not state["cfg"]["common"]["tpu"] and state["cfg"]["common"]["bf16"]
    master = state["last_optimizer_state"]["state"]
    assert master and all(v["exp_avg"].dtype == torch.float32 for v in master.values())
    assert state["last_optimizer_state"].get("loss_scale") is None  # bfloat16: no loss scaler


def test_bf16_off_tpu_keeps_arguments_without_bf16():
    args = argparse.Namespace(bf16=False, tpu=True)
    precision.use_bf16_off_tpu(args)
    assert args.tpu  # only --bf16's implication is undone
