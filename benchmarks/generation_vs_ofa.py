"""Beam search speed of this plugin's OFA model beside OFA's own model code, same weights, same generator.

    python benchmarks/generation_vs_ofa.py --ofa-dir /path/to/OFA [--arch ofa_tiny] [--batch 2] [--beam 5]
        [--steps 16] [--rounds 7] [--threads 2] [--image-size 480] [--json out.json]

Why: beam search used to reorder the decoder's cross-attention keys/values on every step although they do not
change while the batch keeps its size (OFA's and fairseq's attention skip that). This measures the fix beside
OFA. Three models run under fairseq's ``SequenceGenerator``:

* ``ofa``: OFA's model, built by OFA's own code (task ``ofa``, its dictionary: OFA's ``utils/BPE/dict.txt`` +
  ``<mask>`` + 8192 codes + 1000 bins = 59,457 entries) with the caption recipe's model flags;
* ``ours``: ``ofa_el``'s model with the same arguments and dictionary, OFA's weights loaded strictly;
* ``ours_no_skip``: ours with ``cross_attention = False`` on every cross-attention module, i.e. the behaviour
  before the fix (every cached tensor reordered on every step).

Before timing, the script checks that the three give the same hypotheses (tokens equal, scores within 1e-4).
Each round runs every model once, in an order flipped every round; ``min_len = max_len_b = --steps`` makes every
call decode exactly ``--steps`` steps. It reports the median over rounds of the whole ``generate`` call and of
the time spent in the decoder's ``reorder_incremental_state_scripting`` (what the generator calls each step; it
runs ``reorder_incremental_state`` of every module of the decoder), timed by wrapping that method on the
decoder instance. On a shared machine that in-call total (a few milliseconds of work) also holds the scheduler's
delays, so the table adds a steadier number: one step's reorder (the cache captured at step ``--steps // 2``)
replayed alone, median of 30 repeats.

This is a developer benchmark, not library code: it imports OFA's model code from ``--ofa-dir`` at run time
(``--ofa-dir`` goes on ``sys.path`` so that a throw-away fairseq user-dir, written to a temp dir, can import
OFA's ``models`` package and ``tasks/ofa_task.py``; as tests/fixtures/build_ofa_fixture.py does). OFA's model
and ours register the same fairseq names (model ``ofa``, archs ``ofa_*``), so OFA's model is built first, its
registrations are then dropped, and only then is ``ofa_el`` imported. No OFA code is copied here.
"""
import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

ARCHS = ("ofa_tiny", "ofa_medium", "ofa_base", "ofa_large", "ofa_huge")
SEED = 1
IMAGE_SEED = 7
PROMPT = " what does the image describe?"  # OFA's caption prompt
SCORE_TOLERANCE = 1e-4
SHIM_NAME = "ofa_benchmark_shim"
ISOLATED_REPEATS = 30
MODEL_NAMES = ("ofa", "ours", "ours_no_skip")
#: The model flags of configs/caption/stage1_ce.yaml (OFA's caption recipe), --arch and image size aside.
CAPTION_MODEL_FLAGS = [
    "--encoder-normalize-before", "--decoder-normalize-before",
    "--share-decoder-input-output-embed", "--share-all-embeddings",
    "--layernorm-embedding", "--patch-layernorm-embedding", "--code-layernorm-embedding",
    "--resnet-drop-path-rate=0.0", "--encoder-drop-path-rate=0.1", "--decoder-drop-path-rate=0.1",
    "--dropout=0.1", "--attention-dropout=0.0",
    "--max-src-length=80", "--max-tgt-length=20",
    "--freeze-encoder-embedding", "--freeze-decoder-embedding",
    "--add-type-embedding", "--scale-attn", "--scale-fc", "--scale-heads", "--disable-entangle",
    "--num-bins=1000",
]


class UserError(Exception):
    """A problem with the command line or the OFA checkout, reported without a traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """The project's convention for user errors: `error: <message>` on stderr, status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def parse_command_line(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ofa-dir", required=True, type=Path, help="a checkout of OFA's repository")
    parser.add_argument("--arch", default="ofa_tiny", choices=ARCHS)
    parser.add_argument("--batch", type=positive_int, default=2, help="sentences (images) per generate call")
    parser.add_argument("--beam", type=positive_int, default=5)
    parser.add_argument("--steps", type=positive_int, default=16, help="decoding steps per call (min = max length)")
    parser.add_argument("--rounds", type=positive_int, default=7, help="timed rounds; medians are reported")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    parser.add_argument("--image-size", type=positive_int, default=480,
                        help="patch image size (the caption recipe's 480); a multiple of 16")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    options = parser.parse_args(argv)
    if options.image_size % 16:
        parser.error(f"--image-size {options.image_size} is not a multiple of 16 (OFA's ResNet stride)")
    return options


def check_ofa_dir(ofa_dir: Path) -> None:
    needed = ["models/__init__.py", "models/ofa/ofa.py", "tasks/ofa_task.py",
              "utils/BPE/dict.txt", "utils/BPE/encoder.json", "utils/BPE/vocab.bpe"]
    missing = [name for name in needed if not (ofa_dir / name).is_file()]
    if missing:
        raise UserError(f"--ofa-dir {ofa_dir} is not a checkout of OFA's repository: missing {', '.join(missing)}")


def check_json_path(path: Optional[Path]) -> None:
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"--json {path} is a folder; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--json {path}: cannot create its folder ({err.strerror})") from None


def write_user_dir(ofa_dir: Path, scratch: Path) -> Path:
    """A fairseq user-dir registering OFA's model and task ``ofa`` (not OFA's other tasks and their data code)."""
    shim = scratch / SHIM_NAME
    shim.mkdir()
    task_file = ofa_dir / "tasks" / "ofa_task.py"
    (shim / "__init__.py").write_text(
        '"""OFA\'s model (its `models` package) and task `ofa`; OFA\'s folder is on sys.path."""\n'
        "import importlib.util\n"
        "import models  # noqa: F401  (OFA's)\n"
        f"_spec = importlib.util.spec_from_file_location('ofa_task', {str(task_file)!r})\n"
        "_spec.loader.exec_module(importlib.util.module_from_spec(_spec))\n")
    return shim


def build_ofa(ofa_dir: Path, scratch: Path, arch: str, image_size: int,
              model_flags: Sequence[str] = CAPTION_MODEL_FLAGS):
    """OFA's task and model, built by OFA's code through fairseq's parser; returns (args, task, model)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    sys.path.insert(0, str(ofa_dir))  # see the module docstring: OFA's packages import as `models`, `tasks`
    user_dir = write_user_dir(ofa_dir, scratch)
    cli = ["/dev/null", f"--user-dir={user_dir}", f"--bpe-dir={ofa_dir / 'utils' / 'BPE'}", "--task=ofa",
           f"--arch={arch}", f"--seed={SEED}", "--cpu", f"--patch-image-size={image_size}", *model_flags]
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=cli)
    task = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
    torch.manual_seed(SEED)
    model = task.build_model(copy.deepcopy(args))
    return args, task, model.eval()


def forget_ofa_registrations() -> None:
    """Drop OFA's model ``ofa`` and its archs from fairseq's registries, so that ``ofa_el`` can register its own.

    fairseq's ``register_model`` hands back an already registered class under the same name (ours would silently
    become OFA's) and ``register_model_architecture`` refuses a duplicate arch."""
    from fairseq import models

    for arch in models.ARCH_MODEL_INV_REGISTRY.pop("ofa", []):
        for registry in (models.ARCH_MODEL_REGISTRY, models.ARCH_MODEL_NAME_REGISTRY, models.ARCH_CONFIG_REGISTRY):
            registry.pop(arch, None)
    models.MODEL_REGISTRY.pop("ofa", None)
    models.MODEL_DATACLASS_REGISTRY.pop("ofa", None)


def build_ours(ofa_args: argparse.Namespace, ofa_task, ofa_model: torch.nn.Module) -> torch.nn.Module:
    """Our model from OFA's parsed arguments and dictionaries, with OFA's weights (strict)."""
    forget_ofa_registrations()
    from ofa_el.models.ofa.model import OFAModel

    if OFAModel.__module__ != "ofa_el.models.ofa.model":
        raise RuntimeError(f"ofa_el's OFAModel resolved to {OFAModel.__module__}.{OFAModel.__name__}")
    dictionaries = argparse.Namespace(source_dictionary=ofa_task.source_dictionary,
                                      target_dictionary=ofa_task.target_dictionary)
    model = OFAModel.build_model(copy.deepcopy(ofa_args), dictionaries)
    model.load_state_dict(ofa_model.state_dict(), strict=True)
    return model.eval()


def without_cross_attention_skip(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of our model that reorders the cross-attention cache on every step (the behaviour before the fix)."""
    from ofa_el.models.ofa.attention import OFAAttention

    old = copy.deepcopy(model)
    marked = [m for m in old.modules() if isinstance(m, OFAAttention) and m.cross_attention]
    if not marked:
        raise RuntimeError("our model has no OFAAttention with cross_attention=True: nothing to switch off")
    for module in marked:
        module.cross_attention = False
    return old


def make_sample(task, batch: int, image_size: int) -> Dict[str, Dict[str, torch.Tensor]]:
    """OFA's caption input: bos + BPE(prompt) + eos per row, one random image per row."""
    dictionary = task.source_dictionary
    text = dictionary.encode_line(task.bpe.encode(PROMPT), add_if_not_exist=False, append_eos=False).long()
    row = torch.cat([torch.tensor([dictionary.bos()]), text, torch.tensor([dictionary.eos()])])
    images = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(IMAGE_SEED))
    return {"net_input": {
        "src_tokens": row.repeat(batch, 1),
        "src_lengths": torch.full((batch,), row.numel()),
        "patch_images": images,
        "patch_masks": torch.ones(batch, dtype=torch.bool),
    }}


class ReorderTimer:
    """Wraps ``decoder.reorder_incremental_state_scripting`` on the instance; sums the seconds spent in it."""

    def __init__(self, decoder: torch.nn.Module):
        self.seconds = 0.0
        self.calls = 0
        inner: Callable = decoder.reorder_incremental_state_scripting

        def timed(incremental_state, new_order):
            start = time.perf_counter()
            try:
                return inner(incremental_state, new_order)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        decoder.reorder_incremental_state_scripting = timed

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def isolated_reorder_seconds(generate: Callable[[], object], decoder: torch.nn.Module, step: int,
                             repeats: int) -> float:
    """Median time of one reorder of the cache as it stands at decoding step ``step``, repeated alone.

    Inside ``generate`` a shared machine's scheduler adds its own delays to a few-millisecond total; this
    replays one step's reorder ``repeats`` times on the same captured cache (each from a fresh shallow copy)."""
    inner = decoder.reorder_incremental_state_scripting
    captured = []

    def capture(incremental_state, new_order):
        if len(captured) == step - 1:
            captured.append(({key: dict(buffer) for key, buffer in incremental_state.items()}, new_order.clone()))
        else:
            captured.append(None)
        return inner(incremental_state, new_order)

    decoder.reorder_incremental_state_scripting = capture
    try:
        generate()
    finally:
        del decoder.reorder_incremental_state_scripting  # back to the class's method
    if len(captured) < step or captured[step - 1] is None:
        raise RuntimeError(f"the generator reordered the cache {len(captured)} times, fewer than step {step}")
    state, new_order = captured[step - 1]
    seconds = []
    for _ in range(repeats):
        fresh = {key: dict(buffer) for key, buffer in state.items()}
        start = time.perf_counter()
        inner(fresh, new_order)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def check_same_hypotheses(reference: List[List[Dict]], other: List[List[Dict]], name: str) -> float:
    """Tokens equal and positional scores within SCORE_TOLERANCE, hypothesis by hypothesis; the largest diff."""
    largest = 0.0
    if len(reference) != len(other):
        raise RuntimeError(f"{name}: {len(other)} sentences, OFA {len(reference)}")
    for sentence, (ref_hyps, hyps) in enumerate(zip(reference, other)):
        if len(ref_hyps) != len(hyps):
            raise RuntimeError(f"{name}: sentence {sentence} has {len(hyps)} hypotheses, OFA {len(ref_hyps)}")
        for rank, (ref, hyp) in enumerate(zip(ref_hyps, hyps)):
            if not torch.equal(ref["tokens"], hyp["tokens"]):
                raise RuntimeError(f"{name}: sentence {sentence} hypothesis {rank}: tokens {hyp['tokens'].tolist()} "
                                   f"!= OFA's {ref['tokens'].tolist()}")
            diff = float((ref["positional_scores"] - hyp["positional_scores"]).abs().max())
            diff = max(diff, abs(float(ref["score"]) - float(hyp["score"])))
            if diff > SCORE_TOLERANCE:
                raise RuntimeError(f"{name}: sentence {sentence} hypothesis {rank}: scores differ from OFA's by "
                                   f"{diff:.3g} (> {SCORE_TOLERANCE})")
            largest = max(largest, diff)
    return largest


def summarize(generate_s: Dict[str, List[float]], reorder_s: Dict[str, List[float]]) -> Dict[str, Dict[str, float]]:
    """Medians over rounds, their ratios to OFA's, and the median of the per-round (paired) generate ratios."""
    ofa_generate = statistics.median(generate_s["ofa"])
    ofa_reorder = statistics.median(reorder_s["ofa"])
    table = {}
    for name in generate_s:
        generate = statistics.median(generate_s[name])
        reorder = statistics.median(reorder_s[name])
        table[name] = {
            "median_generate_s": generate,
            "median_reorder_s": reorder,
            "generate_ratio_to_ofa": generate / ofa_generate,
            "reorder_ratio_to_ofa": reorder / ofa_reorder if ofa_reorder > 0 else float("nan"),
            "median_paired_generate_ratio_to_ofa": statistics.median(
                mine / theirs for mine, theirs in zip(generate_s[name], generate_s["ofa"])),
        }
    return table


def format_table(table: Dict[str, Dict[str, float]]) -> str:
    header = (f"{'model':<14}{'generate s':>12}{'reorder s':>12}{'gen/OFA':>10}{'reorder/OFA':>13}"
              f"{'paired gen/OFA':>16}{'1 reorder ms':>14}{'its /OFA':>10}")
    lines = [header, "-" * len(header)]
    for name, row in table.items():
        lines.append(f"{name:<14}{row['median_generate_s']:>12.4f}{row['median_reorder_s']:>12.4f}"
                     f"{row['generate_ratio_to_ofa']:>10.3f}{row['reorder_ratio_to_ofa']:>13.2f}"
                     f"{row['median_paired_generate_ratio_to_ofa']:>16.3f}"
                     f"{row['isolated_reorder_ms_per_step']:>14.3f}{row['isolated_reorder_ratio_to_ofa']:>10.2f}")
    return "\n".join(lines)


def run(options: argparse.Namespace) -> Dict[str, object]:
    """Build the three models, check their hypotheses agree, then time them in interleaved rounds."""
    from fairseq.sequence_generator import SequenceGenerator

    torch.set_num_threads(options.threads)
    with tempfile.TemporaryDirectory() as scratch:
        ofa_args, task, ofa_model = build_ofa(options.ofa_dir.resolve(), Path(scratch), options.arch,
                                              options.image_size)
        ours = build_ours(ofa_args, task, ofa_model)
    models = {"ofa": ofa_model, "ours": ours, "ours_no_skip": without_cross_attention_skip(ours)}
    dictionary = task.target_dictionary
    generators = {name: SequenceGenerator([model], dictionary, beam_size=options.beam, max_len_a=0,
                                          max_len_b=options.steps, min_len=options.steps)
                  for name, model in models.items()}
    sample = make_sample(task, options.batch, options.image_size)

    def generate(name: str):
        return generators[name].generate([models[name]], sample, bos_token=dictionary.bos())

    reference = generate("ofa")
    lengths = {len(hyp["tokens"]) for hyps in reference for hyp in hyps}
    if lengths != {options.steps + 1}:  # `steps` tokens, then the eos forced at max length
        raise RuntimeError(f"OFA's hypotheses have lengths {sorted(lengths)}, expected {options.steps + 1}")
    largest_score_diff = {name: check_same_hypotheses(reference, generate(name), name)
                          for name in ("ours", "ours_no_skip")}

    middle_step = max(1, options.steps // 2)
    isolated = {name: isolated_reorder_seconds(lambda name=name: generate(name), models[name].decoder, middle_step,
                                               ISOLATED_REPEATS)
                for name in MODEL_NAMES}
    timers = {name: ReorderTimer(model.decoder) for name, model in models.items()}
    generate_s: Dict[str, List[float]] = {name: [] for name in MODEL_NAMES}
    reorder_s: Dict[str, List[float]] = {name: [] for name in MODEL_NAMES}
    reorder_calls = {}
    for round_index in range(options.rounds):
        order = MODEL_NAMES if round_index % 2 == 0 else tuple(reversed(MODEL_NAMES))
        for name in order:
            timers[name].reset()
            start = time.perf_counter()
            generate(name)
            generate_s[name].append(time.perf_counter() - start)
            reorder_s[name].append(timers[name].seconds)
            reorder_calls[name] = timers[name].calls
    table = summarize(generate_s, reorder_s)
    for name, seconds in isolated.items():
        table[name]["isolated_reorder_ms_per_step"] = 1000 * seconds
        table[name]["isolated_reorder_ratio_to_ofa"] = seconds / isolated["ofa"]
    return {
        "settings": {"arch": options.arch, "batch": options.batch, "beam": options.beam, "steps": options.steps,
                     "rounds": options.rounds, "threads": options.threads, "image_size": options.image_size,
                     "dictionary_size": len(dictionary), "source_tokens": sample["net_input"]["src_tokens"].size(1),
                     "model_flags": CAPTION_MODEL_FLAGS, "torch": torch.__version__,
                     "reorder_calls_per_generate": reorder_calls,
                     "isolated_reorder": {"step": middle_step, "repeats": ISOLATED_REPEATS}},
        "equivalence": {"tokens_equal": True, "max_abs_score_diff_vs_ofa": largest_score_diff,
                        "tolerance": SCORE_TOLERANCE},
        "summary": table,
        "per_round_s": {"generate": generate_s, "reorder": reorder_s},
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_command_line(argv)
    try:
        check_ofa_dir(options.ofa_dir)
        check_json_path(options.json)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = run(options)
    settings = results["settings"]
    print(f"{settings['arch']}, batch {settings['batch']}, beam {settings['beam']}, {settings['steps']} steps, "
          f"{settings['image_size']} px, vocab {settings['dictionary_size']}, {settings['threads']} threads; "
          f"medians of {settings['rounds']} rounds")
    print(format_table(results["summary"]))
    if options.json is not None:
        options.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
