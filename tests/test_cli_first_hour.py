"""A new user's first hour (issue 22): the results folder never replaces a user's files, a failed run
leaves no folder behind, and each message that misled says what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from an8flower.cli import main
from an8flower.errors import UsageError
from an8flower.eval.results_folder import (
    MARKER,
    MARKER_TEXT,
    claim_results_folder,
    is_results_folder,
    portable_record,
    results_folder,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from an8flower.eval.models import build_model
    from an8flower.eval.train import model_card, save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    save_checkpoint(path, build_model("small-cnn", 6, seed=0), model_card("small-cnn", 6, (3, 64, 64), {}, {}, seed=0))
    return path


def board(out, checkpoint, *extra: str) -> list[str]:
    return ["leaderboard", "--out", str(out), "--variant", "single-6c", "--size", "64", "--per-class", "3",
            "--weights", str(checkpoint), "--explainer", "oracle", "--metric", "pointing_game", "--all-images",
            "--no-plots", "--quiet", *extra]


# ------------------------------------------------------------------------------ the results folder


def test_out_refuses_a_users_folder_and_leaves_it_untouched(tmp_path, checkpoint, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.csv").write_text("my own numbers\n")
    assert main(board(mine, checkpoint)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {mine}: folder is not empty and is not an an8flower results folder" in err
    assert "--overwrite" in err
    assert sorted(p.name for p in mine.iterdir()) == ["results.csv"]
    assert (mine / "results.csv").read_text() == "my own numbers\n"


def test_overwrite_writes_into_it_and_the_folder_is_then_ours(tmp_path, checkpoint, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.csv").write_text("my own numbers\n")
    assert main(board(mine, checkpoint, "--overwrite")) == 0
    assert (mine / MARKER).read_text() == MARKER_TEXT and (mine / "results.csv").read_text() != "my own numbers\n"
    assert main(board(mine, checkpoint)) == 0  # a results folder resumes without --overwrite
    assert "| *oracle* | 1.000 ± 0.000 |" in capsys.readouterr().out
    run = json.loads((mine / "run.json").read_text())
    assert run["config"]["out"] == "." and run["models"][0]["source"] == str(checkpoint)  # a user's file, as given


def test_run_json_names_the_folders_files_relative_to_it(tmp_path):
    out = tmp_path / "res"
    record = {"command": ["an8flower"], "config": {"out": str(out), "size": 64},
              "models": [{"source": str(out / "models" / "a.pt")}, {"source": "given"}, {"source": "/elsewhere/b.pt"}]}
    portable = portable_record(record, out)
    assert portable["config"] == {"out": ".", "size": 64}
    assert [m["source"] for m in portable["models"]] == ["models/a.pt", "given", "/elsewhere/b.pt"]
    assert record["config"]["out"] == str(out)  # the record itself is left as it was
    # a [weights] table: files kept with the results are relative, a user's elsewhere as given
    record["config"]["weights"] = {"single-6c:m": str(out / "models" / "m.pt"), "m": "/elsewhere/m.pt"}
    assert portable_record(record, out)["config"]["weights"] == {"single-6c:m": "models/m.pt", "m": "/elsewhere/m.pt"}


def test_a_failed_run_leaves_no_folder_but_never_removes_one_that_was_there(tmp_path, checkpoint, capsys):
    new = tmp_path / "new"
    assert main(board(new, tmp_path / "missing.pt")) == 2
    assert "weights file not found" in capsys.readouterr().err and not new.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(board(empty, tmp_path / "missing.pt")) == 2
    assert empty.is_dir()  # the user's own (empty) folder stays


def test_claiming_rules(tmp_path):
    assert claim_results_folder(tmp_path / "a") is True and (tmp_path / "a" / MARKER).is_file()
    assert claim_results_folder(tmp_path / "a") is False  # ours: claimed again
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="exists and is not a folder"):
        claim_results_folder(tmp_path / "f")
    earlier = tmp_path / "earlier"  # a folder of a run from before the marker: its run.json says so
    earlier.mkdir()
    (earlier / "run.json").write_text(json.dumps({"command": ["an8flower"], "config": {}, "cells": {}}))
    assert is_results_folder(earlier) and claim_results_folder(earlier) is False and (earlier / MARKER).is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"something": "else"}))
    assert not is_results_folder(other)
    with pytest.raises(UsageError, match="not an an8flower results folder"):
        claim_results_folder(other)
    with pytest.raises(RuntimeError):
        with results_folder(tmp_path / "b"):
            (tmp_path / "b" / "cache").mkdir()  # empty folders do not count as written
            raise RuntimeError("boom")
    assert not (tmp_path / "b").exists()
    with pytest.raises(RuntimeError):
        with results_folder(tmp_path / "c"):
            (tmp_path / "c" / "models").mkdir()
            (tmp_path / "c" / "models" / "m.pt").write_bytes(b"trained")  # kept: a rerun resumes from it
            raise RuntimeError("boom")
    assert (tmp_path / "c" / "models" / "m.pt").is_file()


def test_merge_refuses_a_users_folder(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    assert main(["leaderboard", "merge", str(tmp_path / "part-1"), "--out", str(mine)]) == 2
    assert "not an an8flower results folder" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------------------- the messages


def test_verify_a_file_says_it_is_a_file(tmp_path, capsys):
    path = tmp_path / "data.zip"
    path.write_bytes(b"PK\x03\x04")
    assert main(["verify", str(path)]) == 2
    assert capsys.readouterr().err == f"an8flower: error: {path}: is a file, not a dataset folder\n"
    assert main(["verify", str(tmp_path / "none")]) == 2
    assert "no such dataset folder" in capsys.readouterr().err


def test_explain_a_folder_says_it_is_a_folder(tmp_path, checkpoint, capsys):
    assert main(["explain", str(tmp_path), "--weights", str(checkpoint), "--explainer", "gradient",
                 "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert f"IMAGE {tmp_path} is a folder; give one image file" in err and "not found" not in err


def test_weights_that_are_an_image_say_so(tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(sheet)
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert main(["explain", str(img), "--weights", str(sheet), "--explainer", "gradient",
                 "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert f"weights file {sheet} is not an an8flower or PyTorch checkpoint: it is a PNG image" in err
    assert "Python objects" not in err
    from an8flower.eval.models import read_checkpoint

    pdf = tmp_path / "paper.pdf"
    pdf.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    with pytest.raises(UsageError, match=r"paper.pdf is not an an8flower or PyTorch checkpoint: it is a PDF document$"):
        read_checkpoint(pdf)


def test_explain_without_vebi_says_which_explainer_works_without_it(tmp_path, checkpoint, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert main(["explain", str(img), "--weights", str(checkpoint), "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "--explainer vebi needs --vebi NPZ" in err and "--explainer gradcam" in err
    assert main(["explain", str(img), "--weights", str(checkpoint), "--explainer", "gradcam",
                 "--out", str(tmp_path / "o.png")]) == 0  # the one the message names works
    assert json.loads(capsys.readouterr().out)["explainer"] == "gradcam"


def test_reproduce_out_a_file_is_a_usage_error(tmp_path, capsys):
    png = tmp_path / "cf.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert main(["reproduce", "--out", str(png), "--tiny", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"an8flower: error: --out {png}: exists and is not a folder") and "Traceback" not in err
    assert main(["reproduce", "--out", str(tmp_path / "r"), "--tiny", "--imagenet", str(tmp_path),
                 "--imagenet-weights", str(tmp_path / "none.pth")]) == 2
    assert "--imagenet-weights" in capsys.readouterr().err


def test_a_failed_reproduce_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["reproduce", "--out", str(out), "--tiny", "--model", "alexnet", "--quiet"]) == 2
    assert "unknown model 'alexnet'" in capsys.readouterr().err and not out.exists()
