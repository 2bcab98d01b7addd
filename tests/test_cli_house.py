"""The command line's house rules: parsers only, nothing heavy imported, one placeholder style, one
meaning per option name, every default from an8flower.defaults, the RunConfig built once from its layers."""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys

import pytest

from an8flower import defaults
from an8flower.cli import build_parser, main
from an8flower.errors import UsageError


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[prefix + name] = sub
                out.update(_commands(sub, prefix + name + " "))
    return out


COMMANDS = _commands(build_parser())


def test_importing_the_cli_and_building_every_parser_imports_no_torch_or_numpy():
    code = ("import sys, an8flower.cli as cli\ncli.build_parser()\n"
            "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_documented_commands_are_there_one_module_per_group():
    import an8flower.cli as cli

    assert [g.__name__ for g in cli.COMMAND_GROUPS] == [
        "an8flower.cli.dataset", "an8flower.cli.models", "an8flower.cli.board", "an8flower.cli.interpret"]
    assert set(COMMANDS) == {"generate", "verify", "show", "export", "intervene", "cite", "train", "models",
                             "explainers", "leaderboard", "leaderboard merge", "interpret", "explain", "reproduce"}


def test_leaderboard_merge_is_a_subcommand_with_its_own_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["leaderboard", "merge", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: an8flower leaderboard merge") and "--out DIR" in text and "--quick" not in text
    with pytest.raises(SystemExit) as exit_info:  # its --out is required, by argparse
        main(["leaderboard", "merge", "part-1"])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err


#: The one placeholder of each option that several commands share.
PLACEHOLDERS = {"--size": "PX", "--seed": "S", "--device": "DEV", "--per-class": "N", "--batch-size": "N",
                "--threads": "N", "--workers": "N", "--epochs": "N", "--variant": "VARIANT", "--model": "NAME",
                "--explainer": "NAME", "--data": ("DIR", "[VARIANT=]DIR"), "--weights": ("CKPT", "[MODEL=]CKPT"),
                "--imagenet": "DIR", "--mnist": "DIR"}


def test_one_placeholder_style_and_one_meaning_per_option_name():
    seen: dict[str, set] = {}
    for name, parser in COMMANDS.items():
        for action in parser._actions:
            for option in action.option_strings:
                if option in PLACEHOLDERS:
                    assert action.metavar is not None, (name, option)
                    seen.setdefault(option, set()).add(action.metavar)
                    wanted = PLACEHOLDERS[option]
                    assert action.metavar in (wanted if isinstance(wanted, tuple) else (wanted,)), (name, option)
    # --weights is an an8Flower checkpoint in every command that has it; reproduce's ImageNet
    # weights have their own name
    assert {"leaderboard", "interpret", "explain"} <= {n for n, p in COMMANDS.items() if "--weights" in p._option_string_actions}
    assert "--weights" not in COMMANDS["reproduce"]._option_string_actions
    assert "--imagenet-weights" in COMMANDS["reproduce"]._option_string_actions
    assert {"--size", "--seed", "--device"} <= set(seen)


def test_threads_option_on_the_commands_that_compute():
    for name in ("leaderboard", "train", "reproduce", "interpret", "explain"):
        assert "--threads" in COMMANDS[name]._option_string_actions, name


def test_parser_defaults_are_the_logic_defaults():
    from an8flower.export import DEFAULT_SHARD_SIZE
    from an8flower.generate import generate
    from an8flower.layout import DEFAULT_PER_CLASS, MAX_PER_CLASS
    from an8flower.show import write_contact_sheet

    assert DEFAULT_PER_CLASS == defaults.DATASET_PER_CLASS == 1000 and MAX_PER_CLASS == 100_000
    assert inspect.signature(generate).parameters["per_class"].default == defaults.DATASET_PER_CLASS
    assert DEFAULT_SHARD_SIZE == defaults.EXPORT_SHARD_SIZE
    sig = inspect.signature(write_contact_sheet).parameters
    assert sig["per_class"].default == defaults.SHOW_PER_CLASS and sig["thumb"].default == defaults.SHOW_THUMB
    args = build_parser().parse_args(["generate", "single-6c", "--out", "x"])
    assert int(args.per_class) == defaults.DATASET_PER_CLASS and int(args.seed) == defaults.DEFAULT_SEED
    assert int(build_parser().parse_args(["show", "d", "--out", "x.png"]).thumb) == defaults.SHOW_THUMB
    assert int(build_parser().parse_args(["export", "d", "--format", "parquet", "--out", "x"]).shard_size) == 1000


def test_board_defaults_are_one_set_of_numbers():
    from an8flower.eval.config import RunConfig
    from an8flower.eval.interpret import interpret_checkpoint
    from an8flower.eval.train import TrainConfig

    run = RunConfig()
    assert (run.size, run.per_class, run.models, run.out) == (
        defaults.BOARD_SIZE, defaults.BOARD_PER_CLASS, [defaults.DEFAULT_MODEL], defaults.RESULTS_DIR)
    assert RunConfig(per_class={"single-6c": 5}).per_class_for("double-12c") == defaults.BOARD_PER_CLASS
    t = build_parser().parse_args(["train", "--variant", "single-6c", "--out", "m.pt"])
    # The training flags default to the model family's recipe (issue 21): unset flags, and the CNN
    # recipe is TrainConfig's defaults.
    from an8flower.eval.train import recipe_config

    assert (t.size, t.per_class, t.epochs, t.lr, t.batch_size, t.patience) == (112, 500, None, None, None, None)
    cnn = recipe_config("small-cnn")
    assert (cnn.epochs, cnn.lr, cnn.batch_size, cnn.patience) == (
        TrainConfig().epochs, TrainConfig().lr, TrainConfig().batch_size, TrainConfig().patience)
    i = build_parser().parse_args(["interpret", "--weights", "m.pt", "--out", "o"])
    sig = inspect.signature(interpret_checkpoint).parameters
    for key in ("mu", "k", "top_n", "max_features", "batch_size"):
        assert getattr(i, key) == sig[key].default == defaults.INTERPRET_DEFAULTS[key], key


@pytest.mark.parametrize("environ, cpus, expected", [
    ({}, 1, 1), ({}, 2, 1), ({}, 4, 2), ({}, 8, 4), ({}, 64, 4), ({"OMP_NUM_THREADS": "3"}, 64, None),
])
def test_default_threads_is_half_the_cpus_at_most_four_and_yields_to_omp(environ, cpus, expected):
    assert defaults.default_threads(environ, cpus) == expected


def test_threads_flag_sets_torchs_thread_count():
    import torch

    from an8flower.cli.common import apply_threads

    before = torch.get_num_threads()
    try:
        assert apply_threads(argparse.Namespace(threads="1")) == 1 and torch.get_num_threads() == 1
        with pytest.raises(UsageError, match="--threads 0: must be >= 1"):
            apply_threads(argparse.Namespace(threads="0"))
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------- the RunConfig, once


def test_run_config_layers_defaults_file_flags_then_pairs_and_options(tmp_path):
    from an8flower.eval.config import build_run_config

    path = tmp_path / "run.toml"
    path.write_text('variants = ["double-12c"]\nsize = 80\nper_class = 40\n[train]\nepochs = 3\nlr = 0.5\n'
                    '[explainer_options.rise]\nn_masks = 64\n[metric_options.deletion_auc]\nsteps = 9\n')
    (tmp_path / "d").mkdir()
    config = build_run_config(str(path), quick=True, flags={"size": 72, "train": {"epochs": 5}},
                              data=[str(tmp_path / "d")], weights=["m.pt"],
                              options=["rise.n_masks=32", "rise.p=0.25", "deletion_auc.steps=4", "x.mode=\"a b\""],
                              metric_names=["deletion_auc"])
    assert config.quick and config.max_images == 40  # the --quick preset under the file
    assert config.variants == ["double-12c"] and config.per_class == 40  # the file over the preset
    assert config.size == 72 and config.train == {"epochs": 5, "lr": 0.5}  # flags over the file, train merged
    assert config.data == {"double-12c": str(tmp_path / "d")} and config.weights == {"small-cnn": "m.pt"}
    assert config.explainer_options["rise"] == {"n_masks": 32, "p": 0.25} and config.explainer_options["x"] == {"mode": "a b"}
    assert "smoothgrad" not in config.explainer_options  # a file's table replaces the preset's whole table
    assert config.metric_options["deletion_auc"] == {"steps": 4}


def test_a_bad_value_names_the_flag_or_the_file_it_came_from(tmp_path):
    from an8flower.eval.config import build_run_config

    path = tmp_path / "run.toml"
    path.write_text("size = 0\n")
    with pytest.raises(UsageError, match=r"^config file .*run.toml: size must be a positive integer, got 0$"):
        build_run_config(str(path))
    with pytest.raises(UsageError, match=r"^--per-class must be a positive integer, got 0$"):
        build_run_config(flags={"per_class": 0})
    with pytest.raises(UsageError, match=r"^--variant is empty and no ImageNet root is given$"):
        build_run_config(flags={"variants": []})
    with pytest.raises(UsageError, match=r"^--option 'rise=3': expected EXPLAINER.KEY=VALUE$"):
        build_run_config(options=["rise=3"])
    with pytest.raises(UsageError, match=r"--data single-6c=.*nope: no such folder"):
        build_run_config(flags={"variants": ["single-6c"]}, data=[str(tmp_path / "nope")])
    with pytest.raises(UsageError, match="--imagenet needs --weights"):
        build_run_config(flags={"imagenet": str(tmp_path), "variants": []})


def test_train_per_class_zero_names_the_flag_as_typed(tmp_path, capsys):
    assert main(["train", "--variant", "single-6c", "--per-class", "0", "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert err == "an8flower: error: --per-class must be a positive integer, got 0\n"
    assert not (tmp_path / "m.pt").exists()
