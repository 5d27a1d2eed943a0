"""benchmarks/data_loading.py --quick on tiny generated data: both tasks measured, the table and JSON complete."""
import json
import subprocess
import sys

from conftest import REPO_ROOT
from ofa_el.synthetic.demo_set import make_demo_data


def test_quick_run_reports_pipeline_and_training_rates(tmp_path, subprocess_env):
    data = tmp_path / "data"
    # --quick needs 5 batches per task (3 timed + a warm-up per worker): 160 caption rows (5 per image,
    # the recipe's batch 32) and 80 refcoco rows (batch 16)
    make_demo_data(str(data), seed=1, train_images=32, val_images=4, test_images=4, refcoco_train_images=80,
                   refcoco_eval_images=4)
    out_json = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "data_loading.py"), "--quick",
                           "--data-dir", str(data), "--json", str(out_json)],
                          capture_output=True, text=True, env=subprocess_env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()
            if line.split() and line.split()[0] in ("caption", "refcoco")}
    assert set(rows) == {"caption", "refcoco"}, proc.stdout
    for cells in rows.values():  # batch, pipe w=0, pipe w=2, training, ratio w=0, ratio w=2
        assert len(cells) == 6 and all(float(cell) > 0 for cell in cells), proc.stdout
    assert "caption: " in proc.stdout and "refcoco: " in proc.stdout and "-bound" in proc.stdout

    result = json.loads(out_json.read_text())
    assert {"cpu_count", "num_workers", "batches", "repeats", "train_steps", "tasks"} <= set(result)
    assert result["num_workers"] == [0, 2]
    for name in ("caption", "refcoco"):
        task = result["tasks"][name]
        assert {"recipe", "batch_size", "pipeline_samples_per_s", "worker_processes", "training_samples_per_s",
                "ratio", "bound"} <= set(task)
        assert set(task["pipeline_samples_per_s"]) == {"0", "2"}
        assert all(rate > 0 for rate in task["pipeline_samples_per_s"].values())
        assert task["training_samples_per_s"] > 0
        # --num-workers 2 really loads in two worker processes, 0 in this one
        assert task["worker_processes"] == {"0": 0, "2": 2}
        assert set(task["bound"].values()) <= {"training", "data"}
    assert result["tasks"]["caption"]["batch_size"] == 32 and result["tasks"]["refcoco"]["batch_size"] == 16
