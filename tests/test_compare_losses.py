"""experiments/compare_losses.py: parsing fairseq's JSON logs, aggregation over seeds, the reports, the measured time
estimate; one --quick run end to end."""
import importlib.util
import json
import math
import shlex
import statistics
import subprocess
import sys

import pytest
from scipy import stats as scipy_stats

from conftest import REPO_ROOT, tsv_rows
from ofa_el.synthetic.demo_set import make_demo_data


def load_experiment(name):
    """A script of experiments/ as a module: the folder is neither a package nor installed."""
    path = REPO_ROOT / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


cl = load_experiment("compare_losses")

# What fairseq writes to --log-file with --log-format json (taken from a real caption run): the config dump and
# plain messages between JSON lines whose values are strings.
CONFIG_LINE = "{'_name': None, 'common': {'_name': None, 'log_format': 'json', 'seed': 1}}"


def inner(update, loss, nll, p_target=None, past=None, wall=10):
    record = {"epoch": 1, "update": round(update / 235, 3), "loss": str(loss), "nll_loss": str(nll), "ppl": "9.1",
              "wps": "700", "ups": "2.4", "wpb": "305.9", "bsz": "32", "num_updates": str(update),
              "lr": "0.0005", "gnorm": "1.4", "clip": "60", "train_wall": "8", "wall": str(wall)}
    if p_target is not None:
        record.update(p_target=str(p_target), bonus="-1.2", past_log_end=str(past))
    return json.dumps(record)


def valid(update, metric, value, best=None, **extra):
    record = {"epoch": 1, "valid_loss": "6.1", "valid_nll_loss": "6.0", "valid_p_target": "0.25",
              f"valid_{metric}": str(value), "valid_scored": "100", "valid_wps": "5101", "valid_wpb": "1421",
              "valid_bsz": "25", "valid_num_updates": str(update)}
    record.update({f"valid_{k}": str(v) for k, v in extra.items()})
    if best is not None:
        record[f"valid_best_{metric}"] = str(best)
    return json.dumps(record)


def epoch_end(update, loss, wall, train_wall=85, epoch=1):
    return json.dumps({"epoch": epoch, "train_loss": str(loss), "train_nll_loss": "2.2",
                       "train_num_updates": str(update), "train_train_wall": str(train_wall), "train_wall": str(wall)})


def write_log(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def caption_log(path, cider, final_loss, p_target=0.6, past=0.5):
    """A caption log validating at 10, 20, 30 updates with the given CIDEr values."""
    lines = [CONFIG_LINE, "begin dry-run validation on \"valid\" subset", "Start iterating over samples",
             inner(5, 7.0, 6.9, 0.1, 0.0, wall=5), valid(10, "cider", cider[0]),
             inner(15, 5.0, 4.8, 0.3, 0.2, wall=15), valid(20, "cider", cider[1], best=max(cider[:2])),
             inner(25, final_loss, 2.5, p_target, past, wall=25), "Stopping training due to num_updates",
             valid(30, "cider", cider[2], best=max(cider)), "end of epoch 1 (average epoch stats below)",
             epoch_end(30, 4.0, 31), "done training in 31.0 seconds"]
    return write_log(path, lines)


def test_parse_log_reads_each_kind_and_skips_other_lines(tmp_path):
    log = cl.parse_log(caption_log(tmp_path / "train.log", [0.1, 0.5, 0.3], 1.5))
    assert sorted(log.valid) == [10, 20, 30]
    assert log.valid[20]["cider"] == 0.5 and log.valid[30]["best_cider"] == 0.5
    assert sorted(log.train_inner) == [5, 15, 25] and log.train_inner[25]["p_target"] == 0.6
    assert log.train[30]["loss"] == 4.0 and log.train[30]["wall"] == 31.0  # "train_wall" is the epoch's wall
    assert log.train[30]["train_wall"] == 85.0


def test_parse_log_accepts_console_prefix_and_duplicates(tmp_path):
    """Captured stdout prefixes the logger name; a line repeated (several handlers) counts once, the last wins."""
    path = write_log(tmp_path / "stdout.log", [
        "INFO:valid:" + valid(10, "cider", 0.2), "INFO:valid:" + valid(10, "cider", 0.2),
        "INFO:train_inner:" + inner(5, 3.0, 2.9), "INFO:valid:" + valid(20, "cider", 0.4)])
    log = cl.parse_log(path)
    assert sorted(log.valid) == [10, 20] and log.valid[20]["cider"] == 0.4


def test_summary_best_is_the_maximum_and_final_window_is_last(tmp_path):
    summary = cl.summarize_log(caption_log(tmp_path / "train.log", [0.1, 0.5, 0.3], 1.5, 0.61, 0.52), "cider",
                               ("cider",))
    assert summary["best_val"] == 0.5 and summary["best_update"] == 20  # not the last value (0.3)
    assert summary["final_val"] == 0.3
    assert summary["curve"] == {"updates": [10.0, 20.0, 30.0], "cider": [0.1, 0.5, 0.3]}
    assert summary["train_loss"] == 1.5 and summary["train_nll_loss"] == 2.5  # the last window, not the epoch mean
    assert summary["train_p_target"] == 0.61 and summary["train_past_log_end"] == 0.52
    assert summary["num_updates"] == 30 and summary["fairseq_wall_s"] == 31.0


def test_summary_first_of_equal_maxima_and_extra_metrics(tmp_path):
    path = write_log(tmp_path / "train.log", [
        inner(5, 4.0, 3.9), valid(10, "score", 0.2, miou=0.3), valid(20, "score", 0.4, miou=0.45),
        valid(30, "score", 0.4, miou=0.5)])
    summary = cl.summarize_log(path, "score", ("score", "miou"))
    assert summary["best_update"] == 20 and summary["val_miou_at_best"] == 0.45
    assert summary["train_p_target"] is None and summary["train_past_log_end"] is None  # CE logs no EL terms


def test_missing_metric_and_missing_log_name_the_file(tmp_path):
    path = caption_log(tmp_path / "train.log", [0.1, 0.5, 0.3], 1.5)
    with pytest.raises(cl.LogError, match=r"train\.log.*num_updates 10.*valid_score"):
        cl.summarize_log(path, "score")
    with pytest.raises(cl.LogError, match=r"nothing\.log.*not found"):
        cl.parse_log(tmp_path / "nothing.log")
    no_valid = write_log(tmp_path / "novalid.log", [CONFIG_LINE, inner(5, 4.0, 3.9)])
    with pytest.raises(cl.LogError, match=r"novalid\.log.*no validation line"):
        cl.summarize_log(no_valid, "cider")
    bad = write_log(tmp_path / "bad.log", [valid(10, "cider", "n/a")])
    with pytest.raises(cl.LogError, match=r"bad\.log:1.*valid_cider"):
        cl.parse_log(bad)


def test_aggregate_mean_and_sample_std():
    stats = cl.aggregate([0.2, 0.4, 0.9, None])
    assert stats["n"] == 3 and stats["min"] == 0.2 and stats["max"] == 0.9
    assert math.isclose(stats["mean"], 0.5)
    assert math.isclose(stats["std"], math.sqrt(((0.3 ** 2) + (0.1 ** 2) + (0.4 ** 2)) / 2))  # n - 1
    assert cl.aggregate([0.7])["std"] is None and cl.aggregate([0.7])["mean"] == 0.7
    assert cl.aggregate([None, None]) == {"n": 0, "mean": None, "std": None, "min": None, "max": None}


def test_aggregate_curves_on_common_updates():
    curves = [{"updates": [10, 20, 30], "cider": [0.1, 0.5, 0.3]},
              {"updates": [10, 20], "cider": [0.3, 0.7]}]
    out = cl.aggregate_curves(curves, "cider")
    assert out["updates"] == [10, 20]
    assert [round(v, 6) for v in out["mean"]] == [0.2, 0.6]
    assert out["min"] == [0.1, 0.5] and out["max"] == [0.3, 0.7]


def make_work(tmp_path):
    """Two criteria x two seeds of caption logs, with run.json and an evaluation's metrics.json."""
    work = tmp_path / "work"
    values = {("ce", 1): ([0.1, 0.5, 0.3], 2.0), ("ce", 2): ([0.2, 0.3, 0.6], 2.2),
              ("el0.75", 1): ([0.3, 0.8, 0.7], 1.0), ("el0.75", 2): ([0.4, 0.6, 0.9], 1.2)}
    for (criterion, seed), (cider, loss) in values.items():
        run = cl.RunId("caption", criterion, seed).directory(work)
        caption_log(run / "train.log", cider, loss)
        (run / "eval").mkdir()
        (run / "eval" / "metrics.json").write_text(json.dumps(
            {"caption_test": {"CIDEr": cider[-1] + 0.01, "Bleu_4": 0.4, "METEOR": 0.3, "ROUGE_L": 0.7}}))
        (run / "run.json").write_text(json.dumps({"train_s": 100.0 + seed, "eval_s": 20.0,
                                                  "compare_command": "python experiments/compare_losses.py",
                                                  "git_rev": "abc123" if seed == 1 else "def456"}))
    return work


def test_aggregate_runs_over_seeds(tmp_path):
    work = make_work(tmp_path)
    runs = cl.discover_runs(work, ["caption"], None, None)
    assert [(r.criterion, r.seed) for r in runs] == [("ce", 1), ("ce", 2), ("el0.75", 1), ("el0.75", 2)]
    agg = cl.aggregate_runs([cl.collect_run(r, work) for r in runs])["caption"]
    assert list(agg) == ["ce", "el0.75"]
    assert math.isclose(agg["ce"]["best_val"]["mean"], (0.5 + 0.6) / 2)  # per-seed maxima, not last values
    assert math.isclose(agg["el0.75"]["best_val"]["mean"], (0.8 + 0.9) / 2)
    assert math.isclose(agg["el0.75"]["best_val"]["std"], statistics.stdev([0.8, 0.9]))
    assert math.isclose(agg["ce"]["test"]["test CIDEr"]["mean"], (0.31 + 0.61) / 2)
    assert math.isclose(agg["ce"]["train_loss"]["mean"], 2.1)
    assert math.isclose(agg["ce"]["wall_s"]["mean"], 121.5)
    assert [round(v, 6) for v in agg["ce"]["curves"]["cider"]["mean"]] == [0.15, 0.4, 0.45]
    against = agg["el0.75"]["against_baseline"]
    assert "against_baseline" not in agg["ce"]
    assert math.isclose(against["best_val"]["diff"], 0.85 - 0.55)
    # Welch's t by hand: both samples have variance 0.005, so t = 0.3 / sqrt(0.005/2 + 0.005/2), df = 2
    assert math.isclose(against["best_val"]["p"], 2 * (1 - scipy_stats.t.cdf(0.3 / 0.07071067811865475, 2)))


def test_welch_against_needs_two_values_a_side_and_some_spread():
    assert cl.welch_against([1.0, 2.0], [0.5]) == {"diff": 1.0, "p": None}
    assert cl.welch_against([1.0, 1.0], [2.0, 2.0]) == {"diff": -1.0, "p": None}
    assert cl.welch_against([None], [1.0, 2.0]) == {"diff": None, "p": None}
    same = cl.welch_against([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["diff"] == 0.0 and math.isclose(same["p"], 1.0)


def test_from_logs_writes_json_markdown_and_plot(tmp_path):
    work = make_work(tmp_path)
    out = tmp_path / "out"
    results = cl.main(["--from-logs", "--tasks", "caption", "--work-dir", str(work), "--out", str(out)])
    saved = json.loads((out / "compare.json").read_text())
    assert len(saved["runs"]) == 4 and saved["aggregates"] == json.loads(json.dumps(results["aggregates"]))
    text = (out / "compare.md").read_text()
    assert "| el0.75 | 0.850 ± 0.071 |" in text  # the criterion x task table
    assert "| el0.75 | +0.300 (p 0.05) |" in text  # against ce: best val cider, then test CIDEr, BLEU-4
    assert f"`{cl.Path(sys.executable).name} experiments/compare_losses.py --from-logs --tasks caption" in text
    assert saved["meta"]["git_rev"] in text
    assert "* 2 runs trained at `abc123`" in text and "* 2 runs trained at `def456`" in text  # seed 1 / seed 2
    assert (out / "compare_caption_val.png").stat().st_size > 1000
    with pytest.raises(cl.LogError, match="no <task>/<criterion>/seed<s>/train.log"):
        cl.main(["--from-logs", "--tasks", "refcoco", "--work-dir", str(work), "--out", str(out)])


def test_bad_options_are_refused_naming_the_option(tmp_path):
    with pytest.raises(cl.UsageError, match="--criteria: unknown el0.9; choose from ce, el0.5"):
        cl.main(["--criteria", "ce,el0.9", "--work-dir", str(tmp_path), "--out", str(tmp_path)])
    with pytest.raises(cl.UsageError, match="--tasks: unknown captions"):
        cl.main(["--tasks", "captions", "--work-dir", str(tmp_path), "--out", str(tmp_path)])
    with pytest.raises(cl.UsageError, match="--jobs 0: must be at least 1"):
        cl.main(["--jobs", "0", "--work-dir", str(tmp_path), "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_command_line_errors_are_one_line_and_status_2(tmp_path, subprocess_env):
    script = str(REPO_ROOT / "experiments" / "compare_losses.py")
    subprocess_env.pop("OFA_EL_TRACEBACK", None)
    for args, message in ((["--criteria", "el0.9"], "error: --criteria: unknown el0.9"),
                          (["--from-logs", "--work-dir", str(tmp_path / "none")],
                           "error: " + str(tmp_path / "none") + ": no <task>/<criterion>/seed<s>/train.log")):
        done = subprocess.run([sys.executable, script, *args, "--out", str(tmp_path / "out")], capture_output=True,
                              text=True, env=subprocess_env)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert message in done.stderr


def test_criteria_flags_are_the_registered_options():
    """Every extra flag of a criterion is an option of the criterion it selects (a typo would only fail at run time)."""
    from ofa_el.criterions.adjust_label_smoothed_encouraging_loss import AdjustLabelSmoothedEncouragingLossConfig
    from ofa_el.criterions.adjust_label_smoothed_poly1_cross_entropy import AdjustLabelSmoothedPoly1CrossEntropyConfig

    options = {"el": set(AdjustLabelSmoothedEncouragingLossConfig.__dataclass_fields__),
               "poly1": set(AdjustLabelSmoothedPoly1CrossEntropyConfig.__dataclass_fields__)}
    for criterion in cl.CRITERIA.values():
        kind = "poly1" if criterion.name == "poly1" else "el"
        for flag in criterion.extra:
            name = flag.split("=")[0][2:].replace("-", "_")
            assert name == "criterion" or name in options[kind], (criterion.name, flag)


@pytest.fixture
def use_data(demo_data, monkeypatch):
    """The recipes read DATA_DIR/BPE_DIR from the environment, here and in every run the tool starts."""
    monkeypatch.setenv("DATA_DIR", str(demo_data))
    monkeypatch.setenv("BPE_DIR", str(demo_data / "bpe"))
    return demo_data


def test_sizes_come_from_the_recipe_unless_overridden(use_data):
    rows, batch, max_epoch, _, train_file = cl.recipe_sizes("caption")
    assert train_file == use_data / "caption_stage1_train.tsv" and rows == tsv_rows(train_file) and batch == 32
    per_epoch = math.ceil(rows / batch)
    recipe = cl.plan_sizes("caption", 0, 4)
    assert recipe.from_recipe and recipe.updates == per_epoch * max_epoch and cl.size_arguments(recipe, False) == []
    longer = cl.plan_sizes("caption", per_epoch + 1, 4)  # past one epoch: enough epochs for the updates asked
    assert longer.max_epoch == 2 and longer.validate_every == math.ceil((per_epoch + 1) / 4)
    args = cl.size_arguments(longer, False)
    assert f"--max-update={per_epoch + 1}" in args and f"--total-num-update={per_epoch + 1}" in args
    assert "--max-valid-steps=1" not in args and "--max-valid-steps=1" in cl.size_arguments(longer, True)


def test_finished_runs_are_reused_only_with_the_same_command(tmp_path):
    run = cl.RunId("refcoco", "el1.0", 2)
    sizes = cl.Sizes(10, 1, 5, 2, 16, False)
    cmd = cl.train_command(run, run.directory(tmp_path), sizes, quick=False)
    assert cmd[2] == "refcoco/refcoco_el.yaml" and "--log-end=1.0" in cmd and "--seed=2" in cmd
    assert cmd.index("--log-end=1.0") < cmd.index("--max-update=10")  # sizes after the criterion, all after recipe
    run.directory(tmp_path).mkdir(parents=True)
    record = {"train_command": shlex.join(cmd), "restore_file": "/ckpt/start.pt", "train_s": 1.0, "eval_s": 1.0}
    (run.directory(tmp_path) / "run.json").write_text(json.dumps(record))
    assert cl.finished(run, tmp_path, cmd, cl.Path("/ckpt/start.pt")) == record
    assert cl.finished(run, tmp_path, cmd, cl.Path("/ckpt/other.pt")) is None
    other = cl.train_command(run, run.directory(tmp_path), cl.Sizes(20, 1, 5, 2, 16, False), quick=False)
    assert cl.finished(run, tmp_path, other, cl.Path("/ckpt/start.pt")) is None


def test_execute_run_records_and_reuses(tmp_path, monkeypatch):
    """Train and evaluate (faked), keep only checkpoint_best.pt, write run.json; the same run again is reused."""
    calls = []

    def fake_call(cmd, log, env):
        calls.append((cmd, dict(env)))
        directory = log.parent
        if log.name == "stdout.log":
            for name in ("checkpoint_best.pt", "checkpoint_last.pt", "checkpoint_1_2.pt"):
                (directory / name).write_bytes(b"")
        return 2.0

    monkeypatch.setattr(cl, "_call", fake_call)
    run, sizes = cl.RunId("refcoco", "ce", 1), cl.Sizes(4, 1, 2, 1, 16, False)
    record = cl.execute_run(run, tmp_path, sizes, False, cl.Path("/ckpt/start.pt"), None, "cmd", "rev", False)
    train_env, eval_env = calls[0][1], calls[1][1]
    assert train_env["RESTORE_FILE"] == "/ckpt/start.pt" and train_env["DEMO"] == "1"
    assert eval_env["SET"] == "refcoco" and eval_env["CHECKPOINT"].endswith("seed1/checkpoint_best.pt")
    assert sorted(p.name for p in run.directory(tmp_path).glob("*.pt")) == ["checkpoint_best.pt"]
    assert json.loads((run.directory(tmp_path) / "run.json").read_text()) == record
    assert record["train_s"] == 2.0 and record["eval_s"] == 2.0
    assert record["jobs"] == 1 and record["quick"] is False  # what later estimates filter their measurements by
    assert cl.execute_run(run, tmp_path, sizes, False, cl.Path("/ckpt/start.pt"), None, "cmd", "rev", False) == record
    assert len(calls) == 2  # reused, not trained again


@pytest.fixture(scope="module")
def quick_run_data(tmp_path_factory):
    """A demo set with an epoch of at least 4 updates per task (160 caption rows at batch 32, 64 RefCOCO rows at
    batch 16), so that ``--quick``'s 4 updates validate at 2 and 4 as it plans rather than at every epoch's end.
    The shared set is too small for that."""
    out = tmp_path_factory.mktemp("quick_run_data")
    make_demo_data(str(out), seed=3, train_images=32, val_images=4, test_images=3, refcoco_train_images=64,
                   refcoco_eval_images=3)
    return out


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path, quick_run_data, monkeypatch):
    """Train ce and el0.75 on both demo tasks for a few updates, evaluate, and report (minutes on 2 cores)."""
    monkeypatch.setenv("DATA_DIR", str(quick_run_data))
    monkeypatch.setenv("BPE_DIR", str(quick_run_data / "bpe"))
    monkeypatch.delenv("RESTORE_FILE", raising=False)  # grounding starts from a caption model trained here
    out = tmp_path / "out"
    results = cl.main(["--quick", "--work-dir", str(tmp_path / "work"), "--out", str(out)])
    assert [(r["task"], r["criterion"]) for r in results["runs"]] == [
        ("caption", "ce"), ("caption", "el0.75"), ("refcocoplus", "ce"), ("refcocoplus", "el0.75")]
    for run in results["runs"]:
        assert run["num_updates"] == 4 and run["curve"]["updates"] == [2.0, 4.0]
        assert all(value is not None for value in run["test"].values())
        assert run["train_loss"] is not None and run["wall_s"] > 0
        assert (run["train_past_log_end"] is None) == (run["criterion"] == "ce")
    for task in ("caption", "refcocoplus"):
        assert (out / f"compare_{task}_val.png").is_file()
    assert "## refcocoplus" in (out / "compare.md").read_text()
    # refcoco+ finetunes a refcoco model, itself from a caption model: both trained here, in that order
    work = tmp_path / "work"
    assert (work / "start_caption" / "checkpoint_best.pt").is_file()
    assert (work / "start_refcoco" / "checkpoint_best.pt").is_file()
    record = json.loads((work / "refcocoplus" / "ce" / "seed1" / "run.json").read_text())
    assert record["restore_file"] == str(work / "start_refcoco" / "checkpoint_best.pt")
    saved = sorted(p.name for p in (tmp_path / "work" / "caption" / "ce" / "seed1").glob("*.pt"))
    assert saved == ["checkpoint_best.pt"]


def test_start_checkpoints_follow_the_recipes(tmp_path, monkeypatch):
    """caption starts from nothing; refcocoplus from the RefCOCO demo model, trained by tools/demo.py when missing;
    $RESTORE_FILE overrides, and must exist."""
    calls = []
    monkeypatch.setattr(cl, "_call", lambda cmd, log, env: calls.append(cmd) or 1.0)
    from ofa_el import recipes

    for module in (cl, recipes):  # recipes' relative defaults resolve against the root: no demo checkpoints there
        monkeypatch.setattr(module, "REPO_ROOT", tmp_path)
    (tmp_path / "configs").symlink_to(REPO_ROOT / "configs")
    (tmp_path / "setup.py").write_text("")  # a clone's root, which the launcher resolves relative defaults against
    monkeypatch.delenv("RESTORE_FILE", raising=False)
    assert cl.start_checkpoint("caption", tmp_path / "work", False, None) is None
    path = cl.start_checkpoint("refcocoplus", tmp_path / "work", False, None)
    assert path == tmp_path / "demo" / "checkpoints" / "refcoco_el" / "checkpoint_best.pt"
    assert calls == [[cl.sys.executable, "-m", "ofa_el.tools.demo", "--only", "refcoco"]]
    path = cl.start_checkpoint("refcoco", tmp_path / "work", False, None)
    assert path == tmp_path / "demo" / "checkpoints" / "caption_el" / "checkpoint_best.pt"
    assert calls[-1][-1] == "caption"
    given = tmp_path / "given.pt"
    monkeypatch.setenv("RESTORE_FILE", str(given))
    with pytest.raises(FileNotFoundError, match="given.pt"):
        cl.start_checkpoint("refcocoplus", tmp_path / "work", False, None)
    given.write_bytes(b"")
    assert cl.start_checkpoint("refcocoplus", tmp_path / "work", False, None) == given and len(calls) == 2


# ----------------------------------------------------------------------------------------------- time estimate
def timed_run(work, criterion, seed, train_s, eval_s, epoch_train_walls, updates, jobs=1, quick=False):
    """A finished caption run: run.json with its wall times, and a log whose epoch lines hold fairseq's train_wall."""
    directory = cl.RunId("caption", criterion, seed).directory(work)
    per_epoch = updates // len(epoch_train_walls)
    lines = [inner(5, 3.0, 2.9), valid(updates, "cider", 0.5)]
    lines += [epoch_end(per_epoch * (i + 1), 4.0, 50 * (i + 1), train_wall, epoch=i + 1)
              for i, train_wall in enumerate(epoch_train_walls)]
    write_log(directory / "train.log", lines)
    (directory / "run.json").write_text(json.dumps({"train_s": train_s, "eval_s": eval_s, "jobs": jobs,
                                                    "quick": quick}))
    return directory


def test_timing_is_measured_from_finished_runs(tmp_path):
    """Per-update time = train_wall (summed over epochs) / updates; the rest of train_s + eval_s is the fixed part;
    the median over runs; runs timed with another --jobs or --quick, or without a usable log, do not count."""
    work = tmp_path / "work"
    assert cl.measured_timing("caption", work, 1, False) is None
    timed_run(work, "ce", 1, train_s=70.0, eval_s=10.0, epoch_train_walls=[20, 20], updates=100)  # 0.4 s/update
    timed_run(work, "ce", 2, train_s=90.0, eval_s=20.0, epoch_train_walls=[60], updates=100)  # 0.6 s/update
    timed_run(work, "el0.75", 1, train_s=200.0, eval_s=30.0, epoch_train_walls=[100], updates=100)  # 1.0 s/update
    timed_run(work, "el0.75", 2, train_s=999.0, eval_s=1.0, epoch_train_walls=[900], updates=100, jobs=2)
    timed_run(work, "el0.75", 3, train_s=999.0, eval_s=1.0, epoch_train_walls=[900], updates=100, quick=True)
    broken = timed_run(work, "poly1", 1, train_s=999.0, eval_s=1.0, epoch_train_walls=[900], updates=100)
    (broken / "train.log").write_text("no JSON here\n")
    timing = cl.measured_timing("caption", work, 1, False)
    assert timing.runs == 3
    assert math.isclose(timing.per_update_s, 0.6)  # median of 0.4, 0.6, 1.0
    assert math.isclose(timing.fixed_s, 50.0)  # median of 80 - 40, 110 - 60, 230 - 100
    assert cl.measured_timing("caption", work, 2, False).per_update_s == 9.0
    assert cl.measured_timing("caption", work, 1, True).runs == 1


def test_estimate_scales_with_the_measured_rate(tmp_path):
    """The same plan on a machine twice as slow (every measured time doubled) is estimated at twice the time;
    longer runs cost more by the measured per-update time; --jobs slots share the runs."""
    estimates = {}
    for slowdown in (1, 2):
        work = tmp_path / f"machine{slowdown}"
        timed_run(work, "ce", 1, train_s=40.0 * slowdown, eval_s=10.0 * slowdown, epoch_train_walls=[30 * slowdown],
                  updates=60)
        timing = cl.measured_timing("caption", work, 1, False)
        assert math.isclose(timing.per_update_s, 0.5 * slowdown) and math.isclose(timing.fixed_s, 20.0 * slowdown)
        runs = [cl.RunId("caption", c, 1) for c in ("ce", "el0.5", "el0.75")]
        for updates in (60, 120):
            sizes = {"caption": cl.Sizes(updates, 1, 30, 10, 32, False)}
            estimates[slowdown, updates] = cl.estimate_seconds(runs, {"caption": timing}, sizes, jobs=1)
    assert math.isclose(estimates[1, 60], 3 * (20 + 0.5 * 60))
    assert math.isclose(estimates[2, 60], 2 * estimates[1, 60])
    assert math.isclose(estimates[1, 120] - estimates[1, 60], 3 * 0.5 * 60)
    one = cl.Timing(fixed_s=10.0, per_update_s=1.0, runs=1)
    sizes = {"caption": cl.Sizes(20, 1, 5, 5, 32, False)}
    three = [cl.RunId("caption", "ce", s) for s in (1, 2, 3)]
    assert cl.estimate_seconds(three, {"caption": one}, sizes, jobs=2) == 60.0  # two slots: 2 runs, then 1
    assert cl.estimate_seconds(three, {"caption": one}, sizes, jobs=3) == 30.0


def test_runs_timed_first_fill_the_slots():
    todo = [cl.RunId(t, c, 1) for t in ("caption", "refcocoplus") for c in ("ce", "el0.5", "el0.75")]
    assert cl.runs_to_time(todo, ["caption", "refcocoplus"], 1) == [todo[0], todo[3]]  # one of each task
    assert cl.runs_to_time(todo, ["refcocoplus"], 2) == [todo[3], todo[4]]  # two at once, as the rest will run
    assert cl.runs_to_time(todo, ["caption", "refcocoplus"], 3) == [todo[0], todo[3], todo[1]]
    assert cl.runs_to_time(todo, [], 2) == []


@pytest.mark.parametrize("jobs, timed_first, estimate", [(1, 1, "1.8 min for the 3 runs left"),
                                                         (2, 2, "0.6 min for the 2 runs left")])
def test_first_runs_are_timed_then_the_rest_estimated(use_data, tmp_path, monkeypatch, capsys, jobs, timed_first,
                                                      estimate):
    """No finished run in the work dir: the first run(s) are trained (faked: 30 s of which 20 s in training steps,
    10 updates, evaluation 5 s), then the estimate for the rest uses exactly those times: 15 + 2 x 10 = 35 s a run."""
    calls = []

    def fake_call(cmd, log, env):
        calls.append(log)
        directory = log.parent
        if log.name == "stdout.log":
            (directory / "checkpoint_best.pt").write_bytes(b"")
            log_file = next(a.split("=", 1)[1] for a in cmd if a.startswith("--log-file="))
            write_log(cl.Path(log_file), [inner(5, 3.0, 2.9), valid(10, "cider", 0.5), epoch_end(10, 3.0, 25, 20)])
            return 30.0
        results = cl.Path(env["RESULTS_DIR"])
        results.mkdir(parents=True)
        (results / "metrics.json").write_text(json.dumps({"caption_test": {"CIDEr": 0.4, "Bleu_4": 0.2}}))
        return 5.0

    monkeypatch.setattr(cl, "_call", fake_call)
    work = tmp_path / "work"
    results = cl.main(["--tasks", "caption", "--criteria", "ce,el0.75", "--seeds", "2", "--caption-updates", "10",
                       "--jobs", str(jobs), "--yes", "--work-dir", str(work), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert f"no finished caption run to time with --jobs {jobs}: training {timed_first} first" in printed
    assert f"estimated {estimate} with --jobs {jobs}" in printed
    assert "caption: 2.00 s/update x 10 + 15 s per run (median of" in printed
    assert len(results["runs"]) == 4 and len(calls) == 8  # every run trained and evaluated once
    assert json.loads((work / "caption" / "ce" / "seed1" / "run.json").read_text())["jobs"] == jobs
