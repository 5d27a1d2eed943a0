"""experiments/classification_bench.py: CE, EL, Poly-1 and L-GM on scikit-learn's digits, a tiny run."""
import importlib.util
import json
import subprocess
import sys

from conftest import REPO_ROOT


def load_experiment(name):
    """A script of experiments/ as a module: the folder is neither a package nor installed."""
    path = REPO_ROOT / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_classification_bench_tiny_run(tmp_path):
    bench = load_experiment("classification_bench")
    summary = bench.main(["--seeds", "1", "--epochs", "3", "--out", str(tmp_path)])
    assert set(summary) == {"CE", "EL log_end=0.5", "EL log_end=0.75", "EL log_end=1.0", "Poly-1 eps=1", "L-GM"}
    assert all(result["accuracy"][0] > 0.8 for result in summary.values())  # ten classes: chance is 0.1
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seeds"] == 1 and saved["epochs"] == 3 and set(saved["summary"]) == set(summary)
    assert (tmp_path / "classification.png").stat().st_size > 10000


def test_committed_results_have_the_format_the_bench_writes():
    """results/classification/results.json stays readable as the bench writes it: every method, (mean, std) pairs."""
    bench = load_experiment("classification_bench")
    saved = json.loads((REPO_ROOT / "results" / "classification" / "results.json").read_text())
    assert set(saved) == {"seeds", "epochs", "summary"} and set(saved["summary"]) == set(bench.METHODS)
    for method, metrics in saved["summary"].items():
        assert set(metrics) == {"accuracy", "ece", "margin"}, method
        assert all(len(pair) == 2 for pair in metrics.values()), method


def test_bad_option_exits_2_before_training(tmp_path):
    script = REPO_ROOT / "experiments" / "classification_bench.py"
    done = subprocess.run([sys.executable, str(script), "--epochs", "0", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "error: --epochs 0: must be at least 1" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
