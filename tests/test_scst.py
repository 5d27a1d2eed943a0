"""Caption stage 2: the self-critical reward, the SCST criterion on a tiny OFA model, its table checks, the recipe."""
import math
import pickle
import subprocess
from collections import defaultdict

import pytest
import torch
from fairseq import options, tasks

import ofa_el  # noqa: F401
from ofa_el.criterions.scst_reward_criterion import ScstRewardCriterion, self_critical_rewards
from ofa_el.data.scoring import cider

from conftest import DEMO_DATA_OPTIONS, REPO_ROOT, TINY_MODEL, run_script, tsv_rows

TINY_TASK_MODEL = ["--arch", "ofa_tiny", *TINY_MODEL, "--resnet-type", "resnet18", "--code-dict-size", "0",
                   "--num-bins", "10", "--dropout", "0", "--encoder-drop-path-rate", "0", "--decoder-drop-path-rate", "0"]
#: Overrides of the demo recipes' model and run length (as tests/test_recipes_e2e.py trains them).
SMALL_MODEL = TINY_MODEL + ["--batch-size", "8", "--max-epoch", "1", "--log-interval", "1"]


def test_stage2_train_file_holds_each_stage1_image_once_with_all_its_references(demo_data):
    stage1 = [line.split("\t") for line in (demo_data / "caption_stage1_train.tsv").read_text().splitlines()]
    stage2 = [line.split("\t") for line in (demo_data / "caption_stage2_train.tsv").read_text().splitlines()]
    assert len(stage2) == DEMO_DATA_OPTIONS["train_images"]
    assert [row[1] for row in stage2] == sorted({row[1] for row in stage1}, key=int)
    for row in stage2:
        own = [r for r in stage1 if r[1] == row[1]]
        assert row[0] == row[1] and row[2].split("&&") == [r[2] for r in own] and row[3:] == own[0][3:]


def caption_task(data, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        f"{data / 'caption_stage2_train.tsv'},{data / 'caption_val.tsv'}", "--task", "caption", "--scst",
        "--selected-cols", "1,4,2", "--bpe-dir", str(data / "bpe"), "--patch-image-size", "32", "--batch-size", "2",
        "--criterion", "scst_reward_criterion", *TINY_TASK_MODEL, *extra])
    return tasks.setup_task(args), args


def test_reward_is_score_minus_the_mean_of_the_images_other_hypotheses():
    # image 0: three hypotheses scoring 1.2, 0.6, 0.0; image 1: two scoring 2.0 and 1.0
    scores = torch.tensor([1.2, 0.6, 0.0, 2.0, 1.0], dtype=torch.float64)
    image_index = torch.tensor([0, 0, 0, 1, 1])
    rewards = self_critical_rewards(scores, image_index)
    # 1.2 - (0.6 + 0.0) / 2 = 0.9; 0.6 - (1.2 + 0.0) / 2 = 0.0; 0.0 - (1.2 + 0.6) / 2 = -0.9; 2 - 1; 1 - 2
    assert rewards.tolist() == pytest.approx([0.9, 0.0, -0.9, 1.0, -1.0], abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 hypotheses"):
        self_critical_rewards(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 1]))


def test_hypotheses_are_scored_with_the_training_table_and_eos(demo_data):
    task, args = caption_task(demo_data)
    criterion = task.build_criterion(args)
    assert criterion.append_eos  # a table counted at start-up from the training references, with <eos>
    assert criterion.document_frequency[1] == DEMO_DATA_OPTIONS["train_images"]  # one document per training image
    references = [["a red circle at the top", "a big red circle"], ["a blue square"]]
    captions = ["a red circle at the top", "a blue square", "a green triangle"]
    scores = criterion.score(captions, [0, 1, 1], references)
    expected = [cider([(0, f"{c} <eos>", [f"{r} <eos>" for r in references[i]])],
                      document_frequency=criterion.document_frequency)[0] for c, i in zip(captions, [0, 1, 1])]
    assert scores.tolist() == pytest.approx(expected, rel=1e-12)
    # n-grams of every training image ("a", "<eos>") weigh nothing: the wrong caption scores 0
    assert scores[0] > 0 and scores[1] > 0 and scores[2] == 0


def test_scst_updates_raise_the_log_probability_of_the_better_hypothesis(demo_data):
    task, args = caption_task(demo_data, "--scst-args", '{"beam":3,"max_len_b":6}')
    torch.manual_seed(9)  # an untrained model whose beams score apart on the demo references (most score all 0)
    model = task.build_model(args)
    criterion = task.build_criterion(args)
    task.load_dataset("train")
    dataset = task.dataset("train")
    sample = dataset.collater([dataset[i] for i in range(2)])
    hypotheses, image_index = criterion.generate(model, sample)
    assert len(hypotheses) == 6 and image_index.tolist() == [0, 0, 0, 1, 1, 1]  # every beam is a sample
    scores = criterion.score([task.caption_text(h) for h in hypotheses], image_index.tolist(), sample["references"])
    rewards = self_critical_rewards(scores, image_index)
    best, worst = int(rewards.argmax()), int(rewards.argmin())
    assert rewards[best] > 0 > rewards[worst]

    def log_prob(index):
        model.eval()
        with torch.no_grad():
            token_log_probs, _ = criterion.hypothesis_log_probs(model, sample, hypotheses, image_index)
        return float(token_log_probs[index].sum())

    before = (log_prob(best), log_prob(worst))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        loss, sample_size, logging_output = criterion(model, sample)
        (loss / sample_size).backward()
        optimizer.step()
    assert logging_output["nsentences"] == 6 and logging_output["images"] == 2
    assert log_prob(best) > before[0] and log_prob(worst) < before[1]


def test_missing_or_unsafe_table_is_refused_naming_the_file(demo_data, tmp_path):
    missing = tmp_path / "nowhere-words.p"
    task, _ = caption_task(demo_data, "--scst-cider-cached-tokens", str(missing))
    with pytest.raises(FileNotFoundError, match=f"--scst-cider-cached-tokens.*{missing}"):
        ScstRewardCriterion(task)
    unsafe = tmp_path / "unsafe-words.p"
    unsafe.write_bytes(pickle.dumps({"document_frequency": defaultdict(float), "ref_len": 1,
                                     "payload": subprocess.Popen}, protocol=2))
    task, _ = caption_task(demo_data, "--scst-cider-cached-tokens", str(unsafe))
    with pytest.raises(ValueError, match=f"--scst-cider-cached-tokens {unsafe}: refusing to load"):
        ScstRewardCriterion(task)
    plain, _ = caption_task(demo_data, "--scst-args", '{"beam":1}')
    with pytest.raises(ValueError, match="--scst-args: beam must be an integer >= 2"):
        plain.scst_generation_args()


def test_stage2_recipe_trains_from_a_stage1_model_and_validates_cider(demo_data, tmp_path):
    env = {"DATA_DIR": str(demo_data), "BPE_DIR": str(demo_data / "bpe")}
    run_script("caption/train_caption_stage1_el.sh", dict(env, SAVE_DIR=str(tmp_path / "stage1")), *SMALL_MODEL)
    stage1 = tmp_path / "stage1" / "checkpoint_best.pt"
    out = run_script("caption/train_caption_stage2_el.sh",
                     dict(env, RESTORE_FILE=str(stage1), SAVE_DIR=str(tmp_path / "stage2")), *SMALL_MODEL,
                     "--batch-size", "4")
    assert "scst_reward_criterion" in out and "caption_stage2_train.tsv" in out
    images = DEMO_DATA_OPTIONS["train_images"]
    assert f"SCST CIDEr document frequencies counted from the {images} training images" in out
    assert f"Loaded checkpoint {stage1}" in out
    updates = [line for line in out.splitlines() if line.startswith("INFO:train_inner:")]
    assert len(updates) == math.ceil(images / 4)  # one epoch of batches of 4 images, each logged
    assert all(" score=" in line and " reward_abs=" in line for line in updates)
    assert "bsz=20," in updates[0]  # 4 images x 5 beams: every beam hypothesis is a sample
    valid = [line for line in out.splitlines() if line.startswith("INFO:valid:")]
    scored = tsv_rows(demo_data / "caption_val.tsv")
    assert len(valid) == 1 and "| cider " in valid[0] and f"| scored {scored} |" in valid[0]
    assert (tmp_path / "stage2" / "checkpoint_best.pt").is_file()


def test_stage2_recipes_carry_ofas_values():
    from ofa_el.recipes import derived_update_freq, load_recipe
    from ofa_el.tools.launch import command

    for name, restore in (("stage2.yaml", "caption_stage1_ce"), ("stage2_el.yaml", "caption_stage1_el")):
        recipe = load_recipe(REPO_ROOT / "configs" / "caption" / name)
        args = recipe["args"]
        # OFA: 8 GPUs
        assert recipe["global_batch_size"] == 64 == 8 * args["batch-size"] * derived_update_freq(recipe, [], 8)
        assert (args["criterion"], args["scst"], args["lr"], args["end-learning-rate"], args["max-epoch"]) == (
            "scst_reward_criterion", True, 1e-5, 2e-7, 3)
        assert recipe["env"]["RESTORE_FILE"] == f"checkpoints/{restore}/checkpoint_best.pt"
        cmd = command(recipe, {"NPROC_PER_NODE": "1"}, [])
        assert "--update-freq=32" in cmd and "--selected-cols=1,4,2" in cmd
        assert cmd[3].endswith("/caption_stage2_train.tsv," + str(REPO_ROOT / "dataset/caption_data/caption_val.tsv"))
        demo = load_recipe(REPO_ROOT / "configs" / "caption" / name, demo=True)
        assert demo["env"]["RESTORE_FILE"] == "demo/checkpoints/caption_el_short/checkpoint_best.pt"
