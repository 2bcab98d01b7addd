"""The package surface: lazy top-level exports, the CLI's command list, packaging of data files."""

import importlib.resources
import subprocess
import sys

import an8flower
from an8flower.cli import build_parser


def test_import_is_light_and_exports_resolve():
    code = "import sys, an8flower; assert 'torch' not in sys.modules; print(an8flower.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == an8flower.__version__
    for name in an8flower.__all__:
        assert getattr(an8flower, name) is not None


def test_help_and_cite_do_not_import_torch():
    """`an8flower --help` and `an8flower cite` build every command's parser: none may import torch."""
    for argv in (["--help"], ["cite"], ["leaderboard", "--help"], ["train", "--help"]):
        code = (f"import sys\nfrom an8flower.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
                "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0, (argv, out.stderr[-500:])
    import an8flower.eval as ev

    assert ev.build_model is not None and "run_leaderboard" in dir(ev)


def test_render_sample_is_the_function_even_after_the_submodule_is_imported():
    import an8flower.render
    from an8flower.render import render

    assert an8flower.render_sample is render
    assert an8flower.render_sample(an8flower.load_spec("single-6c"), 0, 7, size=64).label == 7 % 6


def test_cli_lists_the_documented_commands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    expected = {"generate", "verify", "show", "train", "leaderboard", "cite", "interpret", "explain", "export"}
    assert expected <= set(sub.choices)


def test_builtin_specs_and_data_cards_ship_as_package_data():
    specs = importlib.resources.files("an8flower") / "specs"
    assert (specs / "single-6c.json").is_file() and (specs / "double-12c.json").is_file()
    cards = importlib.resources.files("an8flower.data_cards")
    for name in ("an8flower-single-6c.md", "an8flower-double-12c.md", "mnist.md", "ilsvrc12.md", "fashion144k.md"):
        assert (cards / name).is_file(), name
