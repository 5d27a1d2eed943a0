"""The ``ofa-el`` command: its tools, ``recipes``, ``cp``, ``launch --print-config``, recipe names, the packaged
ofa_base recipes, and the same commands from a fresh ``pip install .``."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT
from ofa_el import recipes
from ofa_el.recipes import RecipeError, available_recipes, load_recipe, recipe_path
from ofa_el.tools import cli, launch
from ofa_el.tools.launch import command


def ofa_el(*args, cwd=None, env=None, executable=(sys.executable, "-m", "ofa_el.tools.cli")):
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    for name in ("DEMO", "OFA_EL_TRACEBACK", "NPROC_PER_NODE"):
        full_env.pop(name, None)
    return subprocess.run([*executable, *args], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=300)


def test_recipes_lists_every_recipe_with_its_run_script_and_what_it_trains():
    table = "\n".join(recipes.recipe_table())
    for name in available_recipes():
        assert any(line.split()[0] == name for line in table.splitlines()), name
    lines = {line.split()[0]: line for line in table.splitlines()[1:] if line.strip()}
    assert lines["refcoco/refcocoplus_el"].split()[1] == "run_scripts/refcoco/train_refcocoplus_el.sh"
    assert "RefCOCO+ visual grounding with Encouraging Loss" in lines["refcoco/refcocoplus_el"]
    assert lines["refcoco/refcocoplus_base_el"].split()[1] == "-"  # launched by name: ofa-el launch ...
    assert "reverse_demo/el" not in lines  # a fairseq-hydra config, not a launcher recipe
    for line in lines.values():
        assert len(line.split("  ")[-1]) > 10


def test_the_command_runs_the_tools_as_python_m_does(tmp_path):
    listed = ofa_el("recipes", cwd=tmp_path)
    assert listed.returncode == 0 and "caption/stage1_el" in listed.stdout
    no_args = ofa_el("train", cwd=tmp_path)
    assert no_args.returncode == 2 and no_args.stderr.startswith("error: no arguments: ")
    assert "Traceback" not in no_args.stderr and "ofa-el launch caption/stage1_el" in no_args.stderr
    unknown = ofa_el("lanch", cwd=tmp_path)
    assert unknown.returncode == 2 and "did you mean launch" in unknown.stderr


def test_make_tsv_is_dispatched_by_module_name(monkeypatch):
    ran = []
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(cli.runpy, "run_module", lambda name, **kw: ran.append((name, sys.argv[1:], kw)))
    assert cli.main(["make-tsv", "--help"]) == 0
    assert ran == [("ofa_el.tools.make_tsv", ["--help"], {"run_name": "__main__", "alter_sys": True})]
    assert set(cli.TOOL_MODULES) == {"recipes", "cp", "train", "launch", "evaluate", "predict", "check-data",
                                     "cider-table", "demo", "make-tsv"}


def test_recipe_names_resolve_and_wrong_ones_list_close_matches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packaged = REPO_ROOT / "configs" / "refcoco" / "refcocoplus_el.yaml"
    for name in ("refcoco/refcocoplus_el", "refcoco/refcocoplus_el.yaml", "refcocoplus_el", "refcocoplus_el.yaml"):
        assert recipe_path(Path(name)) == packaged
    with pytest.raises(RecipeError) as err:
        recipe_path(Path("refcocopluss_el"))
    message = str(err.value)
    assert "recipe not found: refcocopluss_el" in message and "close matches: " in message
    assert "refcoco/refcocoplus_el" in message.split("close matches: ")[1]
    assert str(tmp_path / "refcocopluss_el") in message and str(REPO_ROOT / "configs") in message
    assert "ofa-el recipes" in message
    with pytest.raises(RecipeError, match="several folders: caption/evaluate, image_classify/evaluate, "
                                          "refcoco/evaluate, snli_ve/evaluate, vqa/evaluate"):
        recipe_path(Path("evaluate"))


def test_a_plain_copy_of_a_recipe_still_finds_what_it_extends(tmp_path, monkeypatch):
    copy = tmp_path / "my.yaml"
    copy.write_text((REPO_ROOT / "configs" / "refcoco" / "refcocoplus_el.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DEMO", raising=False)
    assert load_recipe(copy) == load_recipe(REPO_ROOT / "configs" / "refcoco" / "refcocoplus_el.yaml")
    assert launch.main([str(copy), "--dry-run", "--cpu"]) == 0
    (tmp_path / "lost.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(RecipeError, match="extends nowhere.yaml: found neither next to it .*ofa-el cp"):
        load_recipe(tmp_path / "lost.yaml")


def test_cp_writes_a_self_contained_recipe_that_runs_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    written = recipes.copy_recipe("refcocoplus_el", tmp_path / "elsewhere")  # a folder: the recipe's file name
    assert written == tmp_path / "elsewhere" / "refcocoplus_el.yaml"
    text = written.read_text()
    assert "extends" not in yaml.safe_load(text)
    original = REPO_ROOT / "configs" / "refcoco" / "refcocoplus_el.yaml"
    for demo in (False, True):
        assert load_recipe(written, demo=demo) == load_recipe(original, demo=demo)
        assert command(load_recipe(written, demo=demo), {}, [], gpus=0) == command(
            load_recipe(original, demo=demo), {}, [], gpus=0)
    with pytest.raises(Exception, match="exists; choose another file or add --force"):
        recipes.copy_recipe("refcocoplus_el", written)
    recipes.copy_recipe("refcoco/refcoco_el", written, force=True)
    assert load_recipe(written) == load_recipe(REPO_ROOT / "configs" / "refcoco" / "refcoco_el.yaml")


def test_print_config_shows_the_merged_recipe_and_the_exact_command(capsys, monkeypatch):
    monkeypatch.delenv("DEMO", raising=False)
    monkeypatch.delenv("NPROC_PER_NODE", raising=False)
    monkeypatch.setattr(subprocess, "call", lambda cmd: pytest.fail("--print-config ran the command"))
    assert launch.main(["refcocoplus_el", "--print-config", "--cpu"]) == 0
    out = capsys.readouterr().out
    merged = yaml.safe_load(out)
    assert merged == load_recipe(REPO_ROOT / "configs" / "refcoco" / "refcocoplus_el.yaml")
    assert merged["args"]["log-end"] == 0.75 and merged["args"]["arch"] == "ofa_large"  # from the chain
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"# {sys.executable} -m ofa_el.tools.train ") and "--log-end=0.75" in last


# -- ofa_base: OFA's train_*_base.sh hyper-parameters --------------------------------------------------

#: From OFA's run_scripts (commit a36b91c): what the base scripts set differently from the large ones.
OFA_BASE = {
    "caption/stage1_base_ce": {"arch": "ofa_base", "max-epoch": 5, "drop-worst-after": 6000, "lr": 1e-5,
                               "batch-size": 8, "criterion": "adjust_label_smoothed_cross_entropy"},
    "caption/stage2_base": {"arch": "ofa_base", "max-epoch": 3, "lr": 1e-5, "end-learning-rate": 0.0,
                            "batch-size": 2, "criterion": "scst_reward_criterion"},
    "refcoco/refcoco_base_ce": {"arch": "ofa_base", "max-epoch": 10, "lr": 5e-5, "encoder-drop-path-rate": 0.1,
                                "decoder-drop-path-rate": 0.1, "patch-image-size": 512, "batch-size": 4},
    "refcoco/refcocoplus_base_ce": {"arch": "ofa_base", "max-epoch": 10, "lr": 5e-5, "encoder-drop-path-rate": 0.1},
    "refcoco/refcocog_base_ce": {"arch": "ofa_base", "max-epoch": 12, "lr": 5e-5, "encoder-drop-path-rate": 0.1},
}


@pytest.mark.parametrize("name,expected", sorted(OFA_BASE.items()))
def test_ofa_base_recipes_carry_ofas_base_hyper_parameters(name, expected):
    recipe = load_recipe(available_recipes()[name])
    assert {key: recipe["args"][key] for key in expected} == expected
    assert recipe["env"]["RESTORE_FILE"].endswith(".pt") and "base" in recipe["env"]["SAVE_DIR"]
    el = load_recipe(available_recipes()[name.replace("_ce", "_el").replace("stage2_base", "stage2_base_el")])
    if name.endswith("_ce"):
        assert el["args"]["criterion"] == "adjust_label_smoothed_encouraging_loss" and el["args"]["log-end"] == 0.75
        assert {key: el["args"][key] for key in expected if key != "criterion"} == {
            key: value for key, value in expected.items() if key != "criterion"}
    set_name = name.split("/")[1].split("_")[0]
    if name.startswith("refcoco/"):
        assert recipe["data"][0] == f"${{DATA_DIR}}/{set_name}_train.tsv"


# -- after pip install . into a fresh venv ---------------------------------------------------------------

@pytest.mark.slow
def test_a_fresh_pip_install_has_the_command_the_recipes_and_the_run_scripts(tmp_path):
    """``python -m venv`` + ``pip install --no-deps --no-build-isolation .`` (a copy, not editable), reusing this
    venv's packages through a .pth; then ofa-el recipes, cp and --print-config from an unrelated folder."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    here = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "fairseq").is_dir())
    (site / "test_venv_packages.pth").write_text(here + "\n")
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ there
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "demo", "*.egg-info",
                                                                     "__pycache__", ".pytest_cache"))
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", str(source)], check=True, cwd=tmp_path, timeout=600)
    installed = site / "ofa_el"
    assert (installed / "run_scripts" / "refcoco" / "train_refcocoplus_el.sh").is_file()
    assert (installed / "configs" / "refcoco" / "refcocoplus_base_el.yaml").is_file()
    command_line = (str(venv / "bin" / "ofa-el"),)
    work = tmp_path / "work"
    work.mkdir()
    listed = ofa_el("recipes", cwd=work, executable=command_line)
    assert listed.returncode == 0, listed.stderr
    assert "refcoco/refcocoplus_el" in listed.stdout and "train_refcocoplus_el.sh" in listed.stdout
    assert str(installed / "configs") in listed.stdout
    copied = ofa_el("cp", "refcocoplus_el", "my.yaml", cwd=work, executable=command_line)
    assert copied.returncode == 0, copied.stderr
    shown = ofa_el("launch", "my.yaml", "--print-config", "--cpu", cwd=work, executable=command_line)
    assert shown.returncode == 0, shown.stderr
    assert f"{work}/dataset/refcocoplus_data/refcocoplus_train.tsv" in shown.stdout  # relative to the cwd
    assert f"# {venv}/bin/python -m ofa_el.tools.train " in shown.stdout


def test_the_first_command_of_the_el_readme_parses_and_survives_fairseqs_valid_subset_check(tmp_path):
    """README_EncouragingLoss.md's first command, with its placeholders filled in, is a fairseq-train command line
    that passes --ignore-unused-valid-subsets (without it fairseq takes 'a.tsv,b.tsv' for a data folder)."""
    import shlex

    from ofa_el.preflight import training_config

    text = (REPO_ROOT / "README_EncouragingLoss.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    first = block.split("\n#", 1)[0].replace("\\\n", " ")
    argv = shlex.split(first.replace("TRAIN.tsv,VALID.tsv", "a.tsv,b.tsv").replace("/path/to/ofa-el", str(REPO_ROOT))
                       .replace(" ...", ""))
    assert argv[0] == "fairseq-train" and "--ignore-unused-valid-subsets" in argv
    cfg = training_config(argv[1:])
    assert cfg["dataset"]["ignore_unused_valid_subsets"] is True and cfg["task"]["data"] == "a.tsv,b.tsv"
    assert cfg["criterion"]["_name"] == "adjust_label_smoothed_encouraging_loss" and cfg["criterion"]["log_end"] == 0.75
