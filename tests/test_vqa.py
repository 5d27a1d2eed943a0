"""Task vqa_gen: rows, samples per prompt type, check_data, conf weighting, VQA score, allcand and beam validation."""
import base64
import io
import json
import pickle

import pytest
import torch
from fairseq import metrics, options, tasks
from PIL import Image

import ofa_el  # noqa: F401
from conftest import DEMO_DATA_OPTIONS, TINY_MODEL
from ofa_el.criterions.adjust_label_smoothed_encouraging_loss import AdjustLabelSmoothedEncouragingLossCriterion
from ofa_el.data.vqa_dataset import VqaRowParser, parse_answers
from ofa_el.tasks.candidate_task import CandidateTask
from ofa_el.tools.check_data import main as check_data
from ofa_el.synthetic.vqa import ANSWERS, majority_baseline, question_kind, read_rows

torch.set_num_threads(1)


def image_b64():
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), (10, 200, 10)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def vqa_row(qid="1", question="what colour is it?", answers="1.0|!+green&&0.3|!+blue", objects="circle&&square",
            image=None):
    return "\t".join([qid, "7", question, answers, objects, image if image is not None else image_b64()])


def setup_task(demo_data, *extra, files=("vqa_train.tsv", "vqa_val.tsv")):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        ",".join(str(demo_data / f) for f in files), "--task", "vqa_gen", "--bpe-dir", str(demo_data / "bpe"),
        "--arch", "ofa_tiny", *TINY_MODEL, "--patch-image-size", "32", "--batch-size", "4", "--dropout", "0",
        "--ans2label-file", str(demo_data / "trainval_ans2label.pkl"), "--code-dict-size", "0", "--num-bins", "8",
        "--criterion", "adjust_label_smoothed_encouraging_loss", "--log-end", "0.75", *extra])
    return tasks.setup_task(args), args


# ---------------------------------------------------------------- rows
def test_answers_parse_to_confidences_and_the_target_is_the_most_confident_first():
    assert parse_answers("0.6|!+no&&1.0|!+yes&&1.0|!+maybe") == {"no": 0.6, "yes": 1.0, "maybe": 1.0}
    row = VqaRowParser(32).parse(dict(question_id="5", image=image_b64(), question="Is it Green",
                                      answers="0.6|!+no&&1.0|!+yes&&1.0|!+maybe", objects=""))
    assert (row.question_id, row.question, row.answer, row.conf) == (5, "is it green?", "yes", 1.0)


def test_check_data_lists_every_bad_row(tmp_path, capsys, demo_data):
    answers = tmp_path / "answers.txt"
    answers.write_text("green\nblue\nyes\n")
    path = tmp_path / "vqa_val.tsv"
    lines = [
        vqa_row(),
        vqa_row(qid="2", answers="1.0 green"),
        vqa_row(qid="3", answers="high|!+green"),
        vqa_row(qid="4", question=",.!? "),
        vqa_row(qid="5", image="bm90IGFuIGltYWdl"),
        "\t".join(["6", "7", "what?", "1.0|!+green", "circle"]),
        vqa_row(qid="7", answers="1.0|!+purple&&0.3|!+green"),
        vqa_row(qid="x8"),
        vqa_row(qid="9", answers="1.5|!+green"),
    ]
    path.write_text("\n".join(lines) + "\n")
    code = check_data(["--task", "vqa_gen", "--ans2label-file", str(answers), str(path)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out[:8] == [f"{path}:{row}: {reason}" for row, reason in [
        (2, "answers column: item 1 '1.0 green' has no '|!+' (expected confidence|!+answer)"),
        (3, "answers column: item 1 'high|!+green': confidence 'high' is not a number"),
        (4, "question column is empty after cleaning: ',.!? '"),
        (5, "image column: undecodable or truncated image (UnidentifiedImageError: not an image format PIL can read)"),
        (6, "has 5 tab-separated columns, expected 6"),
        (7, "answers column: the target answer 'purple' is not in the candidate answer list (--ans2label-file)"),
        (8, "question id column: 'x8' is not an integer"),
        (9, "answers column: item 1 '1.5|!+green': confidence 1.5 is not in [0, 1]"),
    ]]
    assert f"{path}: 9 rows: 1 ok, 8 bad" in "\n".join(out)
    # the generated demo files are clean with their answer list
    assert check_data(["--task", "vqa_gen", "--ans2label-file", str(demo_data / "trainval_ans2label.pkl"),
                       str(demo_data / "vqa_train.tsv"), str(demo_data / "vqa_val.tsv")]) == 0


def test_training_stops_at_a_bad_row_naming_file_and_row(tmp_path, demo_data):
    path = tmp_path / "vqa_bad.tsv"
    path.write_text(vqa_row(answers="1.0|!+yes") + "\n" + vqa_row(qid="2", answers="0.5|!+unheard of") + "\n")
    task, _ = setup_task(demo_data, files=(path, path))
    task.load_dataset("valid")
    task.dataset("valid")[0]
    with pytest.raises(ValueError, match=rf"{path}: row 2: answers column: the target answer 'unheard of' is not"):
        task.dataset("valid")[1]


# ---------------------------------------------------------------- samples
@pytest.mark.parametrize("prompt_type", ["none", "src", "prev_output"])
def test_samples_follow_ofa_prompt_types(demo_data, prompt_type):
    task, _ = setup_task(demo_data, "--prompt-type", prompt_type, "--add-object")
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    sample = dataset[0]
    codec, bos, eos, pad = task.codec, task.dictionary.bos(), task.dictionary.eos(), task.dictionary.pad()
    question, answers = read_rows(str(demo_data / "vqa_val.tsv"))[0]
    answer = max(answers, key=answers.get)
    objects = open(demo_data / "vqa_val.tsv").readline().split("\t")[4]
    text = torch.cat([codec.encode(" " + question), codec.encode(" object: " + objects.replace("&&", " "))])
    source = torch.cat([torch.tensor([bos]), text, torch.tensor([eos])])
    tokens = codec.encode(" " + answer)
    assert torch.equal(sample["source"], source)
    prompt = {"none": source[:1], "src": source, "prev_output": source[:-1]}[prompt_type]
    assert torch.equal(sample["prev_output_tokens"], torch.cat([prompt, tokens]))
    assert torch.equal(sample["target"], torch.cat([torch.full((len(prompt) - 1,), pad), tokens, torch.tensor([eos])]))
    assert sample["conf"] == answers[answer] and sample["ref_dict"] == answers
    assert torch.equal(sample["constraint_mask"], task.candidates.target_mask(len(sample["target"]), tokens.tolist()))
    batch = dataset.collater([dataset[i] for i in range(3)])
    assert batch["constraint_masks"].shape == (*batch["target"].shape, len(task.dictionary))
    assert batch["conf"].shape == (3,) and len(batch["decoder_prompts"]) == 3
    assert batch["prefix_tokens"][0, :len(prompt) - 1].tolist() == prompt[1:].tolist()


def test_conf_weights_ce_and_the_el_bonus_alike(demo_data):
    """A VQA batch's loss is the conf-weighted sum of its samples' losses at conf 1 (ours; OFA would turn the
    bonus into log(1 - p^conf) instead)."""
    task, args = setup_task(demo_data, "--prompt-type", "prev_output")
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    model = task.build_model(args).eval()
    criterion = AdjustLabelSmoothedEncouragingLossCriterion(task, label_smoothing=0.1, log_end=0.75)
    batch = dataset.collater([dataset[i] for i in range(4)])
    batch["conf"] = torch.tensor([0.3, 1.0, 0.7, 0.0])
    weighted, _, _ = criterion(model, batch)
    singles = []
    for i in range(4):
        one = dataset.collater([dataset[i]])
        one["conf"] = torch.ones(1)
        singles.append(criterion(model, one)[0])
    torch.testing.assert_close(weighted, sum(c * s for c, s in zip(batch["conf"], singles)), rtol=1e-4, atol=1e-4)


def test_conf_weighting_log_prob_is_ofas_rule(demo_data):
    """``--conf-weighting log-prob`` scales the log-probabilities by conf before the terms, as OFA: the label-smoothed
    CE is unchanged, and EL's bonus becomes log(1 - p^conf) (checked against that formula on the model's own
    constrained log-probabilities, the bonus clamped as the criterion's)."""
    from ofa_el.criterions.adjust_label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropyCriterion
    from ofa_el.losses.terms import BONUS_FLOOR

    task, args = setup_task(demo_data, "--prompt-type", "prev_output")
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    model = task.build_model(args).eval()
    batch = dataset.collater([dataset[i] for i in range(4)])
    batch["conf"] = torch.tensor([0.3, 1.0, 0.7, 0.5])
    for impl in ("fused", "reference"):
        ours = AdjustLabelSmoothedCrossEntropyCriterion(task, label_smoothing=0.1, loss_impl=impl)
        ofas = AdjustLabelSmoothedCrossEntropyCriterion(task, label_smoothing=0.1, loss_impl=impl,
                                                        conf_weighting="log-prob")
        torch.testing.assert_close(ofas(model, batch)[0], ours(model, batch)[0], rtol=1e-5, atol=1e-4)

    with torch.no_grad():
        logits = model(**batch["net_input"])[0].float()
    masks = batch["constraint_masks"].bool()
    lprobs = torch.log_softmax(logits.masked_fill(~masks, float("-inf")), dim=-1)
    target = batch["target"]
    scored = target.ne(task.target_dictionary.pad())
    lp_target = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)[scored]
    conf = batch["conf"][:, None].expand_as(target)[scored]
    expected = (-conf * lp_target + torch.log(torch.clamp(1 - torch.exp(conf * lp_target), min=BONUS_FLOOR))).sum()
    el_ofa = AdjustLabelSmoothedEncouragingLossCriterion(task, label_smoothing=0.0, log_end=1.0,
                                                         conf_weighting="log-prob")
    el_ours = AdjustLabelSmoothedEncouragingLossCriterion(task, label_smoothing=0.0, log_end=1.0)
    with torch.no_grad():
        got, ours_loss = el_ofa(model, batch)[0], el_ours(model, batch)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(got, ours_loss, rtol=1e-3)  # the rules differ for EL


def test_conf_weighting_is_checked(demo_data):
    from ofa_el.errors import OptionError

    task, _ = setup_task(demo_data)
    with pytest.raises(OptionError, match="--conf-weighting"):
        AdjustLabelSmoothedEncouragingLossCriterion(task, conf_weighting="logprob")


# ---------------------------------------------------------------- validation
def test_vqa_score_is_the_predicted_answers_confidence():
    refs = [{"red": 1.0, "orange": 0.3}, {"two": 0.6}, {"yes": 1.0}]
    assert CandidateTask.answer_scores(["orange", "three", "yes"], refs) == [0.3, 0.0, 1.0]


@pytest.mark.parametrize("inference", ["allcand", "beamsearch"])
def test_validation_logs_the_vqa_score_of_its_answers(demo_data, inference):
    task, args = setup_task(demo_data, "--prompt-type", "prev_output", "--val-inference-type", inference,
                            "--valid-batch-size", "7")
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    model = task.build_model(args).eval()
    criterion = task.build_criterion(args)
    batch = dataset.collater([dataset[i] for i in range(4)])
    answers = task.predict_answers(model, batch)
    assert len(answers) == 4 and all(a in ANSWERS for a in answers)  # both inference types stay in the set
    _, _, log = task.valid_step(batch, model, criterion)
    assert log["_vqa_cnt"] == 4
    assert log["_vqa_score_sum"] == pytest.approx(sum(CandidateTask.answer_scores(answers, batch["ref_dict"])))
    with metrics.aggregate() as agg:
        task.reduce_metrics([log, log], criterion)
    assert agg.get_smoothed_values()["vqa_score"] == round(log["_vqa_score_sum"] / 4, 4)


def test_beam_search_as_wide_as_the_answer_set_finds_the_all_candidate_answers(demo_data):
    """Such a beam explores the whole trie: with each step renormalised over the trie's tokens (OFA's generator)
    its best hypothesis is all-candidate scoring's best answer. fairseq's own prefix-constrained search also
    charges the probability outside the trie at every step and favours short answers."""
    beam = json.dumps({"beam": len(ANSWERS), "unnormalized": True})
    task, args = setup_task(demo_data, "--prompt-type", "prev_output", "--val-inference-type", "beamsearch",
                            "--eval-args", beam)
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    model = task.build_model(args).eval()
    batch = dataset.collater([dataset[i] for i in range(6)])
    with torch.no_grad():
        assert task.predict_answers(model, batch) == task.predict_answers(model, batch, "allcand")


def test_uses_ema_scores_with_the_ema_model(demo_data):
    task, args = setup_task(demo_data, "--prompt-type", "prev_output", "--uses-ema")
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    model, ema = task.build_model(args).eval(), task.build_model(args).eval()
    batch = dataset.collater([dataset[i] for i in range(4)])
    with pytest.raises(ValueError, match="--store-ema"):
        task.valid_step(batch, model, task.build_criterion(args))
    seen = []
    task.predict_answers = lambda m, s: seen.append(m) or ["yes"] * 4
    task.valid_step(batch, model, task.build_criterion(args), ema_model=ema)
    assert seen == [ema]


def test_unconstrained_training_needs_beam_search(demo_data):
    with pytest.raises(ValueError, match="allcand needs a candidate set"):
        setup_task(demo_data, "--unconstrained-training")
    task, _ = setup_task(demo_data, "--unconstrained-training", "--val-inference-type", "beamsearch")
    task.load_dataset("valid")
    assert task.candidates is None and "constraint_mask" not in task.dataset("valid")[0]


# ---------------------------------------------------------------- the demo generator
def test_demo_questions_have_answers_in_the_list_and_a_beatable_baseline(demo_data):
    with open(demo_data / "trainval_ans2label.pkl", "rb") as handle:
        assert list(pickle.load(handle)) == list(ANSWERS)
    rows = read_rows(str(demo_data / "vqa_train.tsv"))
    assert len(rows) == 3 * DEMO_DATA_OPTIONS["vqa_train_images"]  # three questions per image
    assert {question_kind(q) for q, _ in rows} <= {"colour", "shape", "position", "count", "yes/no"}
    assert all(set(a) <= set(ANSWERS) and max(a.values()) == 1.0 for _, a in rows)
    assert 0.0 < majority_baseline(str(demo_data / "vqa_train.tsv"), str(demo_data / "vqa_val.tsv")) < 0.8


# ---------------------------------------------------------------- stock fairseq's EMA on an OFA model
def test_fairseq_ema_steps_an_ofa_model_and_starts_from_restored_weights(demo_data):
    from fairseq import trainer
    from fairseq.dataclass.configs import EMAConfig

    from ofa_el.ema_compat import with_weights_as_ema

    task, args = setup_task(demo_data)
    model = task.build_model(args)
    integer_keys = [k for k, v in model.state_dict().items() if not torch.is_floating_point(v)]
    assert integer_keys  # the relative-position bucket tables (and BatchNorm counters)
    ema = trainer.build_ema(model, EMAConfig(store_ema=True, ema_decay=0.5, ema_fp32=True), torch.device("cpu"))
    before = {k: v.clone() for k, v in ema.get_model().state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    ema.step(model, updates=1)  # stock fairseq 0.12 raises here on the integer buffers
    after = ema.get_model().state_dict()
    current = model.state_dict()
    for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.layers.0.fc1.weight"):
        torch.testing.assert_close(after[name], 0.5 * before[name] + 0.5 * current[name])  # tied ones too
    with pytest.raises(ValueError, match="add --ema-fp32"):
        trainer.build_ema(model, EMAConfig(store_ema=True, ema_fp32=False), torch.device("cpu"))
    assert all(torch.equal(after[k], model.state_dict()[k]) for k in integer_keys)
    state = {"model": {"w": torch.ones(1)}, "extra_state": {}}
    assert with_weights_as_ema(state)["extra_state"]["ema"] is state["model"]
    kept = {"model": {"w": torch.ones(1)}, "extra_state": {"ema": {"w": torch.zeros(1)}}}
    assert with_weights_as_ema(kept)["extra_state"]["ema"]["w"].item() == 0.0


# ---------------------------------------------------------------- the recipes
def test_vqa_recipes_state_ofas_hyper_parameters():
    from conftest import REPO_ROOT
    from ofa_el.recipes import derived_update_freq, load_recipe

    large = load_recipe(REPO_ROOT / "configs" / "vqa" / "vqa_el.yaml")
    args = large["args"]
    assert large["global_batch_size"] == 512 == 32 * args["batch-size"] * derived_update_freq(large, [], 32)
    assert (args["arch"], args["lr"], args["max-update"], args["total-num-update"], args["warmup-updates"]) == (
        "ofa_large", 5e-5, 40000, 40000, 1000)
    assert (args["label-smoothing"], args["encoder-drop-path-rate"], args["decoder-drop-path-rate"]) == (0.1, 0.2, 0.2)
    assert (args["patch-image-size"], args["prompt-type"], args["val-inference-type"]) == (480, "prev_output",
                                                                                          "allcand")
    assert args["uses-ema"] and args["store-ema"] and args["ema-fp32"] and args["ema-decay"] == 0.9999
    assert (args["criterion"], args["log-end"]) == ("adjust_label_smoothed_encouraging_loss", 0.75)
    assert args["best-checkpoint-metric"] == "vqa_score" and args["maximize-best-checkpoint-metric"]
    base = load_recipe(REPO_ROOT / "configs" / "vqa" / "vqa_base_ce.yaml")["args"]
    assert (base["arch"], base["max-epoch"], base["warmup-ratio"], base["encoder-drop-path-rate"]) == (
        "ofa_base", 15, 0.04, 0.1)
    assert base["max-update"] is None and base["warmup-updates"] is None  # left out: epochs and ratio instead
    assert base["criterion"] == "adjust_label_smoothed_cross_entropy"
