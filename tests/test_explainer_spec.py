"""The resolved explainer (ExplainerSpec), option checks before any work, and code identity by import closure."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from test_leaderboard import ColourDetector, squares

from an8flower.baselines import (
    VEBI,
    CentreGaussian,
    ExplainerSpec,
    Gradient,
    GroundTruth,
    Oracle,
    RandomMap,
    default_explainers,
    explainer_code_identity,
    registry,
    resolve_explainers,
)
from an8flower.baselines.plugins import import_explainers
from an8flower.cli import main
from an8flower.errors import UsageError
from an8flower.eval import metrics as M
from an8flower.eval.cache import metric_code_identity
from an8flower.eval.config import RunConfig
from an8flower.eval.runner import run_leaderboard
from an8flower.eval.scoring import explainer_options, new_accumulators

# ---------------------------------------------------------------------------------- the spec


def test_a_spec_resolves_the_name_once_with_the_options_in_order() -> None:
    run = {"vebi": {"mu": 7.0, "k": 2}, "vebi[k=1]": {"top_n": 4}}
    spec = ExplainerSpec.resolve("vebi[k=1]", run)
    assert (spec.row, spec.base, spec.cls) == ("vebi[k=1]", "vebi", VEBI)
    assert dict(spec.options) == {"mu": 7.0, "k": 1, "top_n": 4}  # base's, then the row's, then the variant's
    assert spec.needs_fit and not spec.amp_safe and not spec.reference
    with pytest.raises(TypeError):
        spec.options["k"] = 3  # read-only
    plain = ExplainerSpec.resolve("vebi", run)
    assert dict(plain.options) == {"mu": 7.0, "k": 2}  # a row's table applies to that row only
    assert ExplainerSpec.resolve("rise").amp_safe


def test_reference_rows_are_explainers_with_the_reference_flag() -> None:
    specs = {s.row: s for s in resolve_explainers(["oracle", "random", "centre", "gradient"])}
    assert {r for r, s in specs.items() if s.reference} == {"oracle", "random", "centre"}
    assert (specs["oracle"].cls, specs["random"].cls, specs["centre"].cls) == (Oracle, RandomMap, CentreGaussian)
    assert default_explainers()[0] == "oracle" and "oracle" not in default_explainers()[1:]
    assert default_explainers()[1:] == sorted(default_explainers()[1:])


def test_completed_options_add_the_layer_and_seed_only_where_taken() -> None:
    config = RunConfig(seed=5, explainer_options={"gradcam": {"layer": "conv"}})
    assert explainer_options(ExplainerSpec.resolve("gradcam"), "small-cnn", RunConfig()) == {"layer": "features.relu4"}
    assert explainer_options(ExplainerSpec.resolve("gradcam", config.explainer_options), "small-cnn", config) == \
        {"layer": "conv"}
    assert explainer_options(ExplainerSpec.resolve("random"), "small-cnn", config) == {"seed": 5}
    assert explainer_options(ExplainerSpec.resolve("gradient"), "small-cnn", config) == {}


def test_the_key_completes_options_with_constructor_defaults() -> None:
    spec = ExplainerSpec.resolve("gradient")
    assert spec.key({})["options"] == spec.key({"reduction": "abs_max"})["options"] == {"reduction": "abs_max"}
    assert spec.key({})["code"] == dict(spec.code_identity) and spec.key({})["name"] == "gradient"


def test_the_oracle_reads_the_ground_truth_it_is_given() -> None:
    model = ColourDetector()
    images = torch.rand(2, 3, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, 1:3, 1:3] = True
    changed = torch.zeros(2, 4, 4, dtype=torch.bool)
    changed[:, 1, 1:3] = True  # painting as the other class changes the top row of the mask
    labels = torch.tensor([0, 1])
    oracle = Oracle().given(GroundTruth(masks, labels, changed))
    assert torch.equal(oracle(model, images, labels), masks.float())
    other = oracle(model, images, torch.tensor([2, 1]))  # image 0 explained for another class
    expected = masks.clone()
    expected[0, 1, 1:3] = False
    assert torch.equal(other, expected.float())
    assert Gradient().given(GroundTruth(masks, labels)).__class__ is Gradient  # methods ignore the truth
    with pytest.raises(UsageError, match="oracle: no ground-truth masks"):
        Oracle()(model, images, labels)


# ---------------------------------------------------------------- options, before any work


@pytest.mark.parametrize("row, message", [
    ("gradient[reducton=sum]", "explainer 'gradient[reducton=sum]' has no option 'reducton'; options: reduction"),
    ("vebi[k=one]", "explainer 'vebi[k=one]': option k must be int, got 'one'"),
    ("rise[n_masks=1.5]", "explainer 'rise[n_masks=1.5]': option n_masks must be int, got 1.5"),
    ("vebi[stride_fix=1]", "explainer 'vebi[stride_fix=1]': option stride_fix must be bool, got 1"),
])
def test_option_typos_name_the_option_and_the_explainer(row: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        ExplainerSpec.resolve(row)
    assert str(err.value) == message


def test_options_of_an_adapter_are_checked_by_their_defaults() -> None:
    pytest.importorskip("captum")
    assert dict(ExplainerSpec.resolve("captum:IntegratedGradients[n_steps=8]").options) == {"n_steps": 8}
    with pytest.raises(UsageError, match="option n_steps must be int, got 'many'"):
        ExplainerSpec.resolve('captum:IntegratedGradients[n_steps="many"]')


def test_an_option_table_of_an_explainer_the_run_does_not_request_is_checked_too() -> None:
    with pytest.raises(UsageError, match="explainer_options: explainer 'rise' has no option 'nmasks'"):
        resolve_explainers(["gradient"], {"rise": {"nmasks": 10}})
    with pytest.raises(UsageError, match="explainer_options: unknown explainer 'nope'"):
        resolve_explainers(["gradient"], {"nope": {}})


def test_metric_option_typos_name_the_metric(tmp_path) -> None:
    config = RunConfig(out=str(tmp_path / "r"), explainers=["gradient"], metrics=["insertion_auc"],
                       metric_options={"insertion_auc": {"baselin": "blur"}})
    with pytest.raises(UsageError, match="metric 'insertion_auc' has no option 'baselin'; options: steps, baseline"):
        run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False)
    wrong = RunConfig(out=str(tmp_path / "r"), metrics=["deletion_auc"],
                      metric_options={"deletion_auc": {"steps": "x"}})
    with pytest.raises(UsageError, match="metric 'deletion_auc': option steps must be int, got 'x'"):
        run_leaderboard(wrong, datasets=[squares()], models={"m": ColourDetector()}, progress=False)
    assert not (tmp_path / "r").exists()  # refused before the results folder is made


@pytest.mark.parametrize("args, message, not_in", [
    (["--explainer", "gradient[reducton=sum]"], "explainer 'gradient[reducton=sum]' has no option 'reducton'", None),
    (["--explainer", "vebi[k=one]"], "explainer 'vebi[k=one]': option k must be int, got 'one'", None),
    (["--explainer", "gradient", "--option", "insertion_auc.baselin=blur"],
     "metric 'insertion_auc' has no option 'baselin'", "explainer"),
])
def test_the_cli_refuses_option_typos_before_any_work(tmp_path, capsys, args, message, not_in) -> None:
    out = tmp_path / "r"
    # --quick would render and train for minutes: the refusal comes first, and nothing is written
    assert main(["leaderboard", "--quick", "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    if not_in is not None:
        assert not_in not in err
    assert not out.exists()


# --------------------------------------------------------------------- limits, in one place


def test_a_cells_key_is_taken_from_the_accumulator_that_scores_it(tmp_path) -> None:
    config = RunConfig(out=str(tmp_path), explainers=["gradient"], metrics=["iou_auc", "deletion_auc"],
                       model_metric_images=2, metric_options={"deletion_auc": {"steps": 4}}, plots=False)
    iou, deletion = new_accumulators(config.metrics, config, 9)
    assert (iou.limit, deletion.limit) == (None, 2)
    assert deletion.key()["limit"] == 2 and deletion.key()["options"]["steps"] == 4 and iou.key()["limit"] is None
    run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False)
    stored = {}
    for path in (tmp_path / "cache").glob("*/*.json"):
        doc = json.loads(path.read_text())
        if doc["config"]["metric"].get("name") in ("iou_auc", "deletion_auc"):
            stored[doc["config"]["metric"]["name"]] = (doc["config"]["metric"], doc["cell"])
    assert stored["deletion_auc"][0] == deletion.key() and stored["iou_auc"][0] == iou.key()
    assert len(stored["deletion_auc"][1]["scores"]) == 2 and len(stored["iou_auc"][1]["scores"]) == 9


# ------------------------------------------------------------------- code by import closure


def test_a_builtin_explainer_is_keyed_by_the_modules_it_imports_only() -> None:
    gradient = explainer_code_identity(Gradient)["modules"]
    assert "an8flower.baselines.gradient" in gradient and "an8flower.baselines.rules" in gradient
    assert "an8flower.baselines.base" in gradient
    # the CLI, the report, the runner and the other explainers are not in it
    for unrelated in ("an8flower.cli", "an8flower.eval.commands", "an8flower.eval.report", "an8flower.eval.runner",
                      "an8flower.baselines.cam", "an8flower.baselines.vebi", "an8flower.baselines.perturbation",
                      "an8flower.baselines.adapters.catalogue", "an8flower.baselines.adapters.captum"):
        assert unrelated not in gradient
    vebi = explainer_code_identity(VEBI)["modules"]
    assert {"an8flower.baselines.lasso", "an8flower.baselines.features"} <= set(vebi)
    metric = metric_code_identity(M.iou_curve)["modules"]
    assert "an8flower.eval.metrics.localisation" in metric and "an8flower.eval.scoring" in metric
    assert not {"an8flower.eval.report", "an8flower.eval.runner", "an8flower.baselines.gradient"} & set(metric)


PLUGIN = {
    "__init__.py": "",
    "explainers.py": """
        from an8flower.baselines import Explainer, register_explainer

        from .helpers import scale


        @register_explainer("test_closure_scaled")
        class Scaled(Explainer):
            def explain(self, model, images, targets):
                return images.mean(1) * scale()
        """,
    "helpers.py": "def scale():\n    return 2.0\n",
    "unrelated.py": "VALUE = 1\n",
    "cli.py": "from .explainers import Scaled\n",
}


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A user package ``test_closure_lab`` in tmp_path: an explainer, its helper, and two files it does not import."""
    root = tmp_path / "src"
    package = root / "test_closure_lab"
    package.mkdir(parents=True)
    for name, text in PLUGIN.items():
        (package / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(root))
    registry._REGISTRY.pop("test_closure_scaled", None)
    import_explainers("test_closure_lab.explainers")
    yield package
    registry._REGISTRY.pop("test_closure_scaled", None)
    for name in [m for m in sys.modules if m.startswith("test_closure_lab")]:
        del sys.modules[name]


def test_a_user_explainer_is_keyed_by_its_import_closure_in_its_package(plugin) -> None:
    cls = registry.explainer_class("test_closure_scaled")
    first = explainer_code_identity(cls)
    assert {"test_closure_lab/explainers.py", "test_closure_lab/helpers.py"} <= set(first["modules"])
    assert "test_closure_lab/unrelated.py" not in first["modules"] and "test_closure_lab/cli.py" not in first["modules"]
    assert "an8flower.baselines.base" in first["modules"]  # what it takes from an8flower counts too
    (plugin / "unrelated.py").write_text("VALUE = 2\n")
    (plugin / "cli.py").write_text("from .explainers import Scaled  # edited\n")
    assert explainer_code_identity(cls) == first
    (plugin / "helpers.py").write_text("def scale():\n    return 3.0\n")
    assert explainer_code_identity(cls)["source_sha256"] != first["source_sha256"]


def test_editing_a_helper_recomputes_the_cells_and_editing_an_unrelated_file_does_not(plugin, tmp_path) -> None:
    config = RunConfig(out=str(tmp_path / "r"), explainers=["test_closure_scaled"], metrics=["pointing_game"],
                       plots=False)

    def run():
        return run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False)

    assert run().computed == 1
    (plugin / "unrelated.py").write_text("VALUE = 3\n")
    assert run().cached == 1
    (plugin / "helpers.py").write_text("def scale():\n    return -1.0\n")
    again = run()
    assert again.cached == 0 and again.computed == 1


def test_a_file_given_to_import_is_keyed_with_the_helpers_of_its_folder(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "my_helper.py").write_text("FACTOR = 1.0\n")
    (folder / "other.py").write_text("X = 0\n")
    (folder / "my_method.py").write_text(textwrap.dedent("""
        from an8flower.baselines import Explainer, register_explainer
        from my_helper import FACTOR


        @register_explainer("test_closure_file")
        class Mine(Explainer):
            def explain(self, model, images, targets):
                return images.mean(1) * FACTOR
        """))
    monkeypatch.syspath_prepend(str(folder))
    try:
        import_explainers(str(folder / "my_method.py"))
        cls = registry.explainer_class("test_closure_file")
        first = explainer_code_identity(cls)
        assert {"my_method.py", "my_helper.py"} <= set(first["modules"]) and "other.py" not in first["modules"]
        (folder / "other.py").write_text("X = 1\n")
        assert explainer_code_identity(cls) == first
        (folder / "my_helper.py").write_text("FACTOR = 2.0\n")
        assert explainer_code_identity(cls)["source_sha256"] != first["source_sha256"]
    finally:
        registry._REGISTRY.pop("test_closure_file", None)
        sys.modules.pop("my_helper", None)
        sys.modules.pop("an8flower_user_my_method", None)
