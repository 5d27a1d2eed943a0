"""benchmarks/gpu_check.py --smoke: every part's documented keys with sane values, on CPU, in under a minute;
a failing part is recorded and the parts after it still run; bad options stop with an error line."""
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
PART_KEYS = {
    "environment": {"gpu_name", "gpu_total_memory_gib", "gpu_capability", "device_count", "cuda", "cudnn", "nccl",
                    "torch", "fairseq", "python", "ofa_el", "cpu_count", "torch_threads"},
    "criterion": {"N", "V", "repeats", "variants", "memory_measure", "dtypes", "targets"},
    "end_to_end": {"recipe", "arch", "patch_image_size", "batch_size", "vocabulary", "fp16", "warmup_steps", "steps",
                   "seconds_per_step", "el_ce_ratio", "paired_el_ce_ratio", "target_el_ce_ratio", "target_met",
                   "samples_per_s", "peak_memory_gib", "resident_memory_gib", "memory_measure", "loss_scale",
                   "overflow_steps", "nan_loss_steps", "warmup_overflow_steps", "overflowed"},
    "generation": {"beam", "items", "batch_size", "dtype", "caption", "refcoco"},
    "precision": {"recipe", "arch", "patch_image_size", "batch_size", "criterion", "precisions", "steps",
                  "seconds_per_step", "time_ratio", "paired_time_ratio", "peak_memory_gib", "memory_measure",
                  "loss_scale", "overflow_steps", "nan_loss_steps", "warmup_overflow_steps"},
}
GENERATION_KEYS = {"recipe", "arch", "patch_image_size", "items", "generate_s", "items_per_s", "reorder_s",
                   "reorder_calls", "reorder_share", "mean_tokens"}
VARIANTS = ["fairseq_ce", "fused_ce", "fused_el", "reference_el"]


def run_check(args, env, timeout=300):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    return proc, time.perf_counter() - start


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_smoke_run_writes_every_part_with_sane_values(demo_data, tmp_path, subprocess_env):
    out = tmp_path / "gpu_check.json"
    proc, seconds = run_check(["--smoke", "--out", str(out), "--data-dir", str(demo_data)], subprocess_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["smoke"] is True and report["device"] == "cpu"
    assert report["status"] == {"environment": "ok", "criterion": "ok", "end_to_end": "ok", "generation": "ok",
                                "nccl": "skipped", "train_step": "skipped", "precision": "ok"}
    assert report["failed_parts"] == []
    assert set(report["part_seconds"]) == set(report["status"]) and report["total_seconds"] < seconds
    for part, keys in PART_KEYS.items():
        assert keys <= set(report[part]), (part, keys - set(report[part]))

    env = report["environment"]
    assert env["gpu_name"] is None and env["device_count"] == 0
    assert env["torch"] == torch.__version__ and env["python"] == platform.python_version()
    assert env["fairseq"].startswith("0.12") and env["ofa_el"] == str(REPO_ROOT)

    crit = report["criterion"]
    assert (crit["N"], crit["V"]) == (128, 2048) and crit["variants"] == VARIANTS
    assert list(crit["dtypes"]) == ["float32"]  # the smoke run is float32 only
    cells = crit["dtypes"]["float32"]
    for name in VARIANTS:
        assert positive(cells["seconds"][name])
        assert math.isclose(cells["time_ratio"][name], cells["seconds"][name] / cells["seconds"]["fairseq_ce"])
        assert math.isfinite(cells["peak_buffers"][name]) and cells["peak_buffers"][name] >= 0
    targets = crit["targets"]
    assert targets["dtype"] == "float32"
    assert targets["fused_el_time_ratio"]["limit"] == 1.10 and targets["fused_el_peak_buffers"]["limit"] == 2.2
    for key, measured in (("fused_el_time_ratio", cells["time_ratio"]["fused_el"]),
                          ("fused_el_peak_buffers", cells["peak_buffers"]["fused_el"])):
        assert targets[key]["value"] == measured
        assert targets[key]["met"] is (measured <= targets[key]["limit"])

    e2e = report["end_to_end"]
    assert (e2e["arch"], e2e["patch_image_size"], e2e["batch_size"], e2e["fp16"]) == ("ofa_demo", 64, 8, False)
    assert e2e["steps"] == 3 and e2e["warmup_steps"] == 1
    assert all(positive(e2e[key][name]) for key in ("seconds_per_step", "samples_per_s", "peak_memory_gib")
               for name in ("ce", "el"))
    assert math.isclose(e2e["el_ce_ratio"], e2e["seconds_per_step"]["el"] / e2e["seconds_per_step"]["ce"])
    assert positive(e2e["paired_el_ce_ratio"])
    assert e2e["target_el_ce_ratio"] == 1.03 and e2e["target_met"] is (e2e["el_ce_ratio"] <= 1.03)
    assert e2e["loss_scale"] == {"ce": None, "el": None}  # no fp16 scaler in float32
    assert e2e["overflow_steps"] == e2e["nan_loss_steps"] == {"ce": 0, "el": 0} and e2e["overflowed"] is False

    gen = report["generation"]
    assert (gen["beam"], gen["items"], gen["dtype"]) == (5, 4, "float32")
    for name in ("caption", "refcoco"):
        cell = gen[name]
        assert GENERATION_KEYS <= set(cell)
        assert cell["items"] == 4 and positive(cell["generate_s"])
        assert math.isclose(cell["items_per_s"], 4 / cell["generate_s"])
        # beam search reorders its state at every step after the first: the wrapper saw those calls
        assert cell["reorder_calls"] > 0 and 0 < cell["reorder_s"] < cell["generate_s"]
        assert math.isclose(cell["reorder_share"], cell["reorder_s"] / cell["generate_s"])
    assert gen["refcoco"]["non_bin_tokens"] == 0
    assert gen["refcoco"]["box_tokens"] == 4 * 4  # four bin tokens per box, all of them checked

    assert report["nccl"]["skipped"]
    assert "--ofa-dir" in report["train_step"]["skipped"]  # OFA's model needs OFA's code

    prec = report["precision"]
    assert prec["precisions"] == ["cpu", "cpu-bf16"] and prec["steps"] == 1  # the smoke run: float32 vs bfloat16
    assert all(positive(prec["seconds_per_step"][name]) for name in prec["precisions"])
    assert math.isclose(prec["time_ratio"], prec["seconds_per_step"]["cpu-bf16"] / prec["seconds_per_step"]["cpu"])
    assert prec["loss_scale"] == {"cpu": None, "cpu-bf16": None}  # bfloat16 trains without a loss scaler
    assert prec["overflow_steps"] == prec["nan_loss_steps"] == {"cpu": 0, "cpu-bf16": 0}
    for name in ("environment", "criterion", "end_to_end", "generation", "nccl", "train_step", "precision"):
        assert any(line.startswith(name) for line in proc.stdout.splitlines()), proc.stdout  # the closing table


def test_a_failing_part_is_recorded_and_later_parts_still_run(demo_data, tmp_path, subprocess_env):
    out = tmp_path / "gpu_check.json"
    proc, _ = run_check(["--smoke", "--out", str(out), "--data-dir", str(demo_data), "--fail-part", "criterion",
                         "--parts", "environment", "criterion", "generation", "nccl"], subprocess_env)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["criterion"] == {"error": "RuntimeError: failure injected by --fail-part criterion"}
    assert report["failed_parts"] == ["criterion"]
    assert report["status"] == {"environment": "ok", "criterion": "error", "generation": "ok", "nccl": "skipped"}
    assert "end_to_end" not in report  # not asked for
    assert report["generation"]["refcoco"]["non_bin_tokens"] == 0 and positive(report["generation"]["caption"]
                                                                                ["items_per_s"])
    assert "failure injected by --fail-part criterion" in proc.stdout


def test_a_real_failure_is_recorded_too(demo_data, tmp_path, subprocess_env):
    data = tmp_path / "data"  # 2 refcoco validation rows, where generation needs 4
    shutil.copytree(demo_data, data)
    validation = data / "refcoco_val.tsv"
    validation.write_text("".join(validation.read_text().splitlines(keepends=True)[:2]))
    out = tmp_path / "gpu_check.json"
    proc, _ = run_check(["--smoke", "--out", str(out), "--data-dir", str(data), "--parts", "generation", "nccl"],
                        subprocess_env)
    assert proc.returncode == 1
    report = json.loads(out.read_text())
    assert report["generation"]["error"] == f"ValueError: {data / 'refcoco_val.tsv'}: 2 rows, 4 needed for generation"
    assert report["nccl"]["skipped"]


@pytest.mark.parametrize("args, message", [
    ([], "error: no CUDA device visible to torch"),
    (["--smoke", "--bpe-dir", "/nonexistent/bpe"], "error: --bpe-dir /nonexistent/bpe: missing encoder.json, "
                                                   "vocab.bpe, dict.txt"),
    (["--smoke", "--out", "/proc/gpu_check/out.json"], "error: --out /proc/gpu_check/out.json: cannot create"),
])
def test_bad_options_stop_with_an_error_line(args, message, tmp_path, subprocess_env):
    if not args and torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the check would run")
    proc, _ = run_check(args + (["--out", str(tmp_path / "x.json")] if "--out" not in args else []), subprocess_env)
    assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_two_process_check_over_gloo(subprocess_env):
    """The nccl part's code (all-reduce, one DDP step) over gloo on CPU: CI has no second GPU to run it."""
    code = "import json, gpu_check; print(json.dumps(gpu_check.two_process_check('gloo', elements=1 << 16)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env,
                          cwd=REPO_ROOT / "benchmarks", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["allreduce_correct"] is True and result["allreduce_bytes"] == 4 << 16
    assert result["ddp_max_grad_error"] < 1e-6  # DDP's gradient is the mean of the two ranks' gradients
    assert result["ddp_max_param_difference"] == 0.0 and positive(result["bus_bandwidth_gb_s"])


def test_a_smoke_run_never_writes_the_gpu_report(monkeypatch, tmp_path):
    """results/gpu_check.json is where a GPU run's results belong: --smoke writes to the temp folder or --out."""
    import importlib.util

    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as when run as a script: its sibling criterion_bench
    spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)  # its dataclasses look their module up there
    spec.loader.exec_module(script)
    gpu_report = REPO_ROOT / "results" / "gpu_check.json"
    smoke_out, _ = script.prepare(script.parse_args(["--smoke"]))
    assert smoke_out != gpu_report and smoke_out.parent == Path(tempfile.gettempdir())
    given, _ = script.prepare(script.parse_args(["--smoke", "--out", str(tmp_path / "x" / "smoke.json")]))
    assert given == tmp_path / "x" / "smoke.json"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert script.prepare(script.parse_args([]))[0] == gpu_report
