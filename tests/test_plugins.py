"""User explainers reach the CLI: --import MODULE_OR_FILE and the an8flower.explainers entry points."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from an8flower.baselines import plugins, registry
from an8flower.cli import main
from an8flower.errors import UsageError

USER_CODE = textwrap.dedent("""
    from an8flower.baselines import Explainer, register_explainer

    @register_explainer("{name}")
    class Brightness(Explainer):
        '''The image's brightness as the heatmap.'''

        def explain(self, model, images, targets):
            return images.mean(1)
""")


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_method.py"
    path.write_text(USER_CODE.format(name="test_my_method"))
    yield path
    registry._REGISTRY.pop("test_my_method", None)
    sys.modules.pop("an8flower_user_my_method", None)


def test_leaderboard_runs_a_user_explainer_imported_from_a_file(tmp_path, user_file, capsys) -> None:
    assert main(["leaderboard", "--list", "--import", str(user_file)]) == 0
    assert "test_my_method" in capsys.readouterr().out
    out = tmp_path / "r"
    code = main(["leaderboard", "--import", str(user_file), "--explainer", "test_my_method", "--metric", "pointing_game",
                 "--variant", "single-6c", "--size", "64", "--per-class", "5", "--epochs", "1", "--max-images", "3",
                 "--all-images", "--no-plots", "--quiet", "--out", str(out)])
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert list(run["explainers"]) == ["test_my_method"] and run["cells"]["computed"] == 1


def test_without_import_the_name_is_unknown(tmp_path, capsys) -> None:
    code = main(["leaderboard", "--explainer", "test_not_registered", "--variant", "single-6c", "--out", str(tmp_path)])
    assert code == 2 and "unknown explainer 'test_not_registered'" in capsys.readouterr().err


def test_import_by_module_name(tmp_path, monkeypatch) -> None:
    (tmp_path / "lab_explainers.py").write_text(USER_CODE.format(name="test_lab_method"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        plugins.import_explainers("lab_explainers")
        assert "test_lab_method" in registry.list_explainers()
    finally:
        registry._REGISTRY.pop("test_lab_method", None)
        sys.modules.pop("lab_explainers", None)


def test_bad_imports_name_the_target(tmp_path) -> None:
    with pytest.raises(UsageError, match=r"--import .*nope\.py: no such Python file"):
        plugins.import_explainers(str(tmp_path / "nope.py"))
    with pytest.raises(UsageError, match="--import no_such_module_xyz: no module named 'no_such_module_xyz'"):
        plugins.import_explainers("no_such_module_xyz")
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('not today')\n")
    with pytest.raises(UsageError, match=r"broken\.py: importing it raised ValueError: not today"):
        plugins.import_explainers(str(broken))


def test_entry_point_group_registers_installed_plugins(tmp_path, monkeypatch) -> None:
    """A fake installed distribution declaring the group: listing the registry imports its module."""
    (tmp_path / "ep_plugin.py").write_text(USER_CODE.format(name="test_ep_method"))
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('missing dependency')\n")
    dist = tmp_path / "an8flower_test_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: an8flower-test-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[an8flower.explainers]\nep = ep_plugin\nbad = broken_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_LOADED", False)
    try:
        with pytest.warns(UserWarning, match="entry point 'bad' .*failed to import: ImportError: missing dependency"):
            names = registry.list_explainers()
        assert "test_ep_method" in names and "gradient" in names
        assert plugins.load_entry_points() == []  # once per process
    finally:
        registry._REGISTRY.pop("test_ep_method", None)
        sys.modules.pop("ep_plugin", None)
