"""Classifiers by name, seeded initialisation, model hashes and loading weights from local files."""

from __future__ import annotations

import pytest
import torch
import torchvision

from an8flower.errors import UsageError
from an8flower.eval.models import (
    DEFAULT_CAM_LAYER,
    build_model,
    list_models,
    load_checkpoint,
    load_weights,
    model_hash,
)
from an8flower.eval.train import model_card, save_checkpoint


def _card(arch: str, k: int) -> dict:
    return model_card(arch, k, (3, 32, 32), {"name": "test"}, {"test": 1.0}, seed=0)


@pytest.mark.parametrize(
    "name, shape",
    [("small-cnn", (2, 3, 64, 64)), ("lenet", (2, 1, 28, 28)), ("resnet18", (2, 3, 64, 64)),
     ("resnet50", (1, 3, 64, 64)), ("vgg16", (1, 3, 32, 32))],
)
def test_every_model_maps_images_to_logits_and_has_its_cam_layer(name: str, shape: tuple) -> None:
    model = build_model(name, 5, seed=0).eval()
    with torch.no_grad():
        out = model(torch.rand(shape, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (shape[0], 5)
    assert torch.isfinite(out).all()
    assert DEFAULT_CAM_LAYER[name] in dict(model.named_modules())


def test_list_models_and_unknown_name() -> None:
    assert list_models() == ["lenet", "resnet18", "resnet50", "small-cnn", "vgg16"]
    with pytest.raises(UsageError, match="unknown model 'alexnet'"):
        build_model("alexnet", 3)
    with pytest.raises(UsageError, match="num_classes"):
        build_model("small-cnn", 1)


def test_seeded_initialisation_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = build_model("small-cnn", 4, seed=3), build_model("small-cnn", 4, seed=3), build_model("small-cnn", 4, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model_hash(a) == model_hash(b) != model_hash(c)


def test_model_hash_tracks_every_weight() -> None:
    model = build_model("small-cnn", 3, seed=0)
    h = model_hash(model)
    assert len(h) == 64 and h == model_hash(build_model("small-cnn", 3, seed=0))
    with torch.no_grad():
        model.features.bn2.running_mean[5] += 1e-3  # a buffer, not a parameter
    assert model_hash(model) != h


def test_resnet_blocks_with_distinct_relus_compute_what_torchvision_computes() -> None:
    ours = build_model("resnet18", 7, seed=0).eval()
    ref = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    ref.load_state_dict(ours.net.state_dict())
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref((x - ours.normalize.mean) / ours.normalize.std)
        assert torch.allclose(ours(x), expected, atol=1e-5)
    relus = [m for m in ours.modules() if isinstance(m, torch.nn.ReLU)]
    assert len(relus) == len({id(m) for m in relus}) == 1 + 2 * 8  # stem + two per basic block
    assert not any(m.inplace for m in relus)


def test_checkpoint_round_trip(tmp_path) -> None:
    model = build_model("small-cnn", 6, seed=1).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, _card("small-cnn", 6))
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loaded, card = load_checkpoint(path)
    assert card["architecture"] == "small-cnn" and card["num_classes"] == 6
    assert model_hash(loaded) == model_hash(model)
    again = build_model("small-cnn", 6, weights=path).eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left


def test_plain_torchvision_state_dict_loads_into_the_wrapper(tmp_path) -> None:
    ref = torchvision.models.resnet18(weights=None, num_classes=4)
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    ours = build_model("resnet18", 4, weights=tmp_path / "tv.pth")
    assert torch.equal(ours.net.fc.weight, ref.fc.weight)


def test_missing_file_names_it(tmp_path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(UsageError, match="nope.pt"):
        build_model("small-cnn", 3, weights=missing)
    with pytest.raises(UsageError, match="nope.pt"):
        load_checkpoint(missing)


def test_unreadable_file_names_it(tmp_path) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(UsageError, match="garbage.pt"):
        load_weights(build_model("small-cnn", 3), bad)


def test_wrong_architecture_names_the_file(tmp_path) -> None:
    path = tmp_path / "small.pt"
    save_checkpoint(path, build_model("small-cnn", 3, seed=0), _card("small-cnn", 3))
    with pytest.raises(UsageError, match="small.pt.*does not fit"):
        build_model("resnet18", 3, weights=path)
    with pytest.raises(UsageError, match=r"small.pt holds a 'small-cnn' model, not 'vgg16'"):
        load_checkpoint(path, name="vgg16")
    with pytest.raises(UsageError, match="small.pt.*3 classes"):
        build_model("small-cnn", 5, weights=path)


def test_checkpoint_without_card_cannot_be_rebuilt_alone(tmp_path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(build_model("small-cnn", 3).state_dict(), path)
    with pytest.raises(UsageError, match="plain.pt has no model card"):
        load_checkpoint(path)
    assert model_hash(build_model("small-cnn", 3, weights=path))  # a plain state dict still loads


@pytest.mark.parametrize("content", ["pickle-with-code", "numpy-array", "text", "empty"])
def test_a_file_that_is_not_a_checkpoint_is_refused_without_unsafe_advice(tmp_path, content: str) -> None:
    import pickle

    import numpy as np


    class Runs:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "not-a-checkpoint.pt"
    if content == "pickle-with-code":
        path.write_bytes(pickle.dumps({"state_dict": Runs()}))
    elif content == "numpy-array":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path.write_bytes(path.with_suffix(".npy").read_bytes())
    else:
        path.write_text("hello\n" if content == "text" else "")
    with pytest.raises(UsageError) as info:
        build_model("small-cnn", 6, weights=path)
    message = str(info.value)
    assert str(path) in message and "not an an8flower or PyTorch checkpoint" in message
    assert "weights_only" not in message and "False" not in message


def test_leaderboard_weights_error_is_one_line_without_unsafe_advice(tmp_path, capsys) -> None:
    from an8flower.cli import main

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04\x95not a pickle")
    code = main(["leaderboard", "--variant", "single-6c", "--weights", str(bad), "--out", str(tmp_path / "r"),
                 "--size", "64", "--per-class", "3", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "not an an8flower or PyTorch checkpoint" in err and "weights_only" not in err


# ------------------------------------------------------------- models by prefixed name, presets

TINY_TIMM = "timm:deit_tiny_patch16_224[depth=2,embed_dim=16,img_size=32,num_heads=2,patch_size=8]"
TINY_TIMM_OPTIONS = {"depth": 2, "embed_dim": 16, "img_size": 32, "num_heads": 2, "patch_size": 8}


def test_timm_name_builds_what_timm_builds_with_the_same_seed() -> None:
    timm = pytest.importorskip("timm")
    from an8flower.eval.models import resolve_model

    ours = build_model(TINY_TIMM, 3, seed=5).eval()
    torch.manual_seed(5)
    ref = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3, **TINY_TIMM_OPTIONS).eval()
    assert set(ours.net.state_dict()) == set(ref.state_dict())
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ours.net.state_dict().items())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean, std = torch.tensor(ref.pretrained_cfg["mean"]).view(1, 3, 1, 1), torch.tensor(ref.pretrained_cfg["std"]).view(1, 3, 1, 1)
        torch.testing.assert_close(ours(x), ref((x - mean) / std))
    spec = resolve_model(TINY_TIMM)
    assert spec.library == "timm" and spec.builder == "deit_tiny_patch16_224" and spec.options == TINY_TIMM_OPTIONS
    assert spec.identity()["version"] == timm.__version__ and spec.identity()["options"] == TINY_TIMM_OPTIONS


def test_torchvision_name_builds_what_torchvision_builds() -> None:
    ours = build_model("torchvision:mobilenet_v3_small", 4, seed=2).eval()
    torch.manual_seed(2)
    ref = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=4).eval()
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ours.net.state_dict().items())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref((x - ours.normalize.mean) / ours.normalize.std))


def test_names_resolve_once_to_a_canonical_spec() -> None:
    from an8flower.eval.models import resolve_model

    spec = resolve_model("vit-tiny[num_layers=2, image_size=32]")
    assert spec.name == "vit-tiny[image_size=32,num_layers=2]" and resolve_model(spec.name) == spec
    assert spec.options == {"image_size": 32, "patch_size": 16, "num_layers": 2, "num_heads": 3, "hidden_dim": 192,
                            "mlp_dim": 768}
    assert resolve_model("vit-tiny[num_layers=2]", {"num_layers": 4}).options["num_layers"] == 4  # given options win
    assert resolve_model("vit-tiny").accepts(spec) and not resolve_model("vit-tiny[num_layers=3]").accepts(spec)
    assert resolve_model("small-cnn").identity()["library"] == "an8flower"


@pytest.mark.parametrize("name, match", [
    ("timm:deit_tiny_patch16_224[pretrained=true]", "option 'pretrained' is not accepted"),
    ("torchvision:resnet18[weights=\"IMAGENET1K_V1\"]", "option 'weights' is not accepted"),
    ("timm:deit_tiny_patch16_224[act_layer=\"../x\"]", "string values are words"),
    ("small-cnn[width=8]", "'small-cnn' takes no options"),
    ("keras:resnet", "library prefixes are timm:, torchvision:"),
    ("torchvision:not_a_model", "torchvision .* has no model 'not_a_model'"),
    ("vit-tiny[depth", "NAME\\[KEY=VALUE"),
])
def test_bad_model_names_are_usage_errors(name: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        build_model(name, 3)


def test_an_option_the_builder_refuses_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"vit-tiny\[no_such=1\].*could not build"):
        build_model("vit-tiny[no_such=1]", 3)


def test_a_missing_library_names_its_extra(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(UsageError, match=r'pip install "an8flower\[timm\]"'):
        build_model("timm:deit_tiny_patch16_224", 3)
    with pytest.raises(UsageError, match=r'pip install "an8flower\[timm\]"'):
        build_model("deit-tiny", 3)
    assert not any(n.startswith("timm:") for n in list_models(libraries=True))


def test_timm_is_imported_only_for_timm_names() -> None:
    import subprocess
    import sys

    code = ("import sys; from an8flower.eval.models import build_model, resolve_model; "
            "build_model('small-cnn', 3); resolve_model('vit-tiny'); print('timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_listing_includes_presets_and_library_names() -> None:
    from an8flower.eval.models import model_catalogue

    names = list_models(presets=True, libraries=True)
    assert {"vit-tiny", "torchvision:resnet18", "torchvision:vit_b_16"} <= set(names)
    cat = model_catalogue()
    tv = next(e for e in cat["libraries"] if e["prefix"] == "torchvision")
    assert tv["available"] and torchvision.__version__.startswith(tv["version"]) and tv["models"] >= 50
    assert "torchvision:fasterrcnn_resnet50_fpn" not in names  # classifiers only
    assert cat["ours"]["small-cnn"] == "features.relu4" and "vit-tiny" in cat["presets"]


def test_a_timm_checkpoint_rebuilds_from_its_card_with_its_options(tmp_path) -> None:
    pytest.importorskip("timm")
    model = build_model(TINY_TIMM, 3, seed=0).eval()
    path = tmp_path / "deit.pt"
    save_checkpoint(path, model, _card(TINY_TIMM, 3))
    loaded, card = load_checkpoint(path, name="timm:deit_tiny_patch16_224")
    assert card["architecture"] == TINY_TIMM and card["model"]["options"] == TINY_TIMM_OPTIONS
    assert model_hash(loaded) == model_hash(model)
    with pytest.raises(UsageError, match="deit.pt holds a .* not 'timm:deit_tiny_patch16_224\\[depth=3\\]'"):
        load_checkpoint(path, name="timm:deit_tiny_patch16_224[depth=3]")


@pytest.mark.parametrize("field, value", [("architecture", "vit-tiny[hidden_dim=4096,image_size=32,num_layers=2,"
                                                           "num_heads=2,patch_size=8,mlp_dim=32]"),
                                          ("num_classes", 10**9)])
def test_a_card_that_describes_a_bigger_model_than_its_file_is_refused(tmp_path, field, value) -> None:
    name = "vit-tiny[hidden_dim=16,image_size=32,mlp_dim=32,num_heads=2,num_layers=2,patch_size=8]"
    card = _card(name, 3)
    card[field] = value
    path = tmp_path / "tampered.pt"
    save_checkpoint(path, build_model(name, 3, seed=0), card)
    # check_model_card bounds num_classes before the shapes are compared; either refusal names the file
    with pytest.raises(UsageError, match="tampered.pt: (its model card describes|model card field 'num_classes')"):
        load_checkpoint(path)


def test_finetune_from_safetensors_keeps_the_backbone_and_a_new_head(tmp_path) -> None:
    from safetensors.torch import save_file

    name = "vit-tiny[hidden_dim=16,image_size=32,mlp_dim=32,num_heads=2,num_layers=2,patch_size=8]"
    imagenet = build_model(name, 1000, seed=1)
    path = tmp_path / "in1k.safetensors"
    save_file({k: v.contiguous() for k, v in imagenet.net.state_dict().items()}, str(path))  # a plain torchvision state dict
    fresh = build_model(name, 6, seed=2)
    tuned = build_model(name, 6, seed=2, weights=path, finetune=True)
    for key, value in tuned.state_dict().items():
        source = fresh if key.startswith("net.heads.head.") else imagenet
        assert torch.equal(value, source.state_dict()[key]), key
    with pytest.raises(UsageError, match="in1k.safetensors does not fit"):
        build_model(name, 6, weights=path)


def test_model_options_fold_into_canonical_names() -> None:
    from an8flower.eval.config import RunConfig
    from an8flower.eval.config import parse_model_options as model_options

    opts = model_options(["vit-tiny.num_layers=2", "vit-tiny.image_size=32"])
    assert opts == {"vit-tiny": {"num_layers": 2, "image_size": 32}}
    config = RunConfig(models=["small-cnn", "vit-tiny"], model_options=opts)
    assert config.models == ["small-cnn", "vit-tiny[image_size=32,num_layers=2]"]
    assert RunConfig(**config.to_dict()).models == config.models  # folding twice changes nothing
    with pytest.raises(UsageError, match="model options for 'resnet18'"):
        RunConfig(models=["small-cnn"], model_options={"resnet18": {"x": 1}})


def test_each_family_gets_its_recipe_and_explicit_settings_win() -> None:
    from an8flower.eval.train import RECIPES, model_family, recipe_config

    assert model_family("vit-tiny") == "vit" and model_family("small-cnn") == "cnn"
    vit = recipe_config("vit-tiny", {"epochs": 3}, seed=1, hflip=True)
    assert (vit.lr, vit.weight_decay, vit.epochs, vit.seed) == (RECIPES["vit"]["lr"], 0.05, 3, 1)
    assert vit.translate > 0 and vit.label_smoothing > 0
    cnn = recipe_config("small-cnn", {}, seed=0)
    assert cnn.translate == 0 and cnn.lr == 1e-2


def test_models_command_lists_ours_presets_and_libraries(capsys) -> None:
    import json

    from an8flower.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "small-cnn" in out and "vit-tiny" in out and f"torchvision: torchvision {torchvision.__version__.split('+')[0]}" in out
    assert main(["models", "--json"]) == 0
    cat = json.loads(capsys.readouterr().out)
    assert set(cat) == {"ours", "presets", "libraries"}
    assert main(["models", "--library", "torchvision"]) == 0
    assert "torchvision:vit_b_16" in capsys.readouterr().out.split()


def test_train_command_fine_tunes_from_local_weights_with_model_options(tmp_path, capsys) -> None:
    import json

    from safetensors.torch import save_file

    from an8flower.cli import main

    tiny = {"image_size": 64, "patch_size": 16, "num_layers": 1, "num_heads": 2, "hidden_dim": 8, "mlp_dim": 8}
    name = "vit-tiny[" + ",".join(f"{k}={v}" for k, v in sorted(tiny.items())) + "]"
    source = build_model(name, 1000, seed=3)
    weights = tmp_path / "in1k.safetensors"
    save_file({k: v.contiguous() for k, v in source.net.state_dict().items()}, str(weights))
    options = [a for k, v in tiny.items() for a in ("--model-option", f"vit-tiny.{k}={v}")]
    out = tmp_path / "vit.pt"
    assert main(["train", "--variant", "single-6c", "--model", "vit-tiny", *options, "--weights", str(weights),
                 "--size", "64", "--per-class", "5", "--epochs", "1", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == name
    model, card = load_checkpoint(out)
    assert card["model"]["options"] == tiny and card["training"]["lr"] == 1e-3 and card["training"]["epochs"] == 1
    import hashlib

    assert card["initialised_from"] == {"file": "in1k.safetensors",
                                        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    # one epoch of fine-tuning from the file's weights: close to them, not to a fresh initialisation
    fresh = build_model(name, 6, seed=0)
    w = "net.encoder.layers.encoder_layer_0.mlp.0.weight"
    assert (model.state_dict()[w] - source.state_dict()[w]).abs().max() < (model.state_dict()[w] - fresh.state_dict()[w]).abs().max()
