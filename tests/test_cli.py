"""The command line: happy paths, and bad input → one line on stderr, exit code 2, nothing written."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from PIL import Image

from advlens.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_models_lists_the_registry(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "efficientnet_lite0" in out.split() and "vgg16" in out.split()


def test_attack_and_explain_write_their_outputs(capsys, tmp_path, digits_model):
    out = tmp_path / "att"
    code, text, _ = run(capsys, "attack", "--model", "small_vgg_digits", "--images", "digits", "--limit", "6",
                        "--eps", "0.1", "--out", str(out), "--quiet")
    assert code == 0, text
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 6 and set(df.columns) >= {"image", "success", "psnr"}
    assert len(list((out / "images").glob("*.png"))) == 6

    out = tmp_path / "exp"
    code, _, _ = run(capsys, "explain", "--model", "small_vgg_digits", "--images", "digits", "--limit", "3",
                     "--method", "layercam", "--layers", "block1_conv2,block3_conv2", "--out", str(out))
    assert code == 0
    from safetensors.torch import load_file

    maps = load_file(str(out / "maps.safetensors"))
    assert set(maps) == {"block1_conv2", "block3_conv2", "images"} and maps["block3_conv2"].shape == (3, 32, 32)


def _corrupt(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.new("RGB", (64, 64), "red").save(path)
    path.write_bytes(path.read_bytes()[:200])
    return str(path)


def _not_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    return str(path)


@pytest.mark.parametrize("case, args, message", [
    ("unknown model", ["explain", "--model", "vgg61"], "unknown model 'vgg61'"),
    ("unknown layer", ["explain", "--model", "small_vgg_digits", "--images", "digits", "--layers", "block9_conv1"],
     "unknown layer"),
    ("unknown method", ["explain", "--model", "small_vgg_digits", "--images", "digits", "--method", "gradkam"],
     "unknown explanation method"),
    ("unknown attack", ["attack", "--model", "small_vgg_digits", "--images", "digits", "--method", "pgdd"],
     "unknown attack"),
    ("empty folder", ["explain", "--model", "small_vgg_digits", "--images", "EMPTY"], "no images found"),
    ("corrupt image", ["explain", "--model", "small_vgg_digits", "--images", "CORRUPT"], "corrupt or truncated"),
    ("weights not a state dict", ["attack", "--model", "small_vgg_digits", "--weights", "NOTDICT", "--images", "digits"],
     "is not a state dict"),
    ("bad eps", ["attack", "--model", "small_vgg_digits", "--images", "digits", "--param", "eps=-1"],
     "eps must be a positive number"),
    ("bad --param", ["attack", "--model", "small_vgg_digits", "--images", "digits", "--method", "cw", "--param", "c"],
     "--param takes KEY=VALUE"),
    ("unknown attack parameter", ["attack", "--model", "small_vgg_digits", "--images", "digits", "--method", "onepixel",
                                  "--param", "pixel=2"], "unknown parameter(s) ['pixel']"),
    ("unknown interpreter", ["attack", "--model", "small_vgg_digits", "--images", "digits", "--method", "advedge",
                             "--interpreter", "lime"], "unknown interpreter 'lime'"),
    ("bad target", ["attack", "--model", "small_vgg_digits", "--images", "digits", "--target", "cat"], "--target"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, tmp_path, digits_model, case, args, message):
    (tmp_path / "empty").mkdir()
    subs = {"EMPTY": str(tmp_path / "empty"), "CORRUPT": _corrupt(tmp_path), "NOTDICT": _not_state_dict(tmp_path)}
    out = tmp_path / "out"
    before = set(os.listdir(tmp_path))
    code, _, err = run(capsys, *[subs.get(a, a) for a in args], "--out", str(out), "--quiet")
    assert code == 2, case
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("advlens: error:") and message in lines[0], err
    assert set(os.listdir(tmp_path)) == before  # no output folder, no temp leftovers


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "advlens.cli", "explain", "--model", "nope", "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "unknown model 'nope'" in proc.stderr


def test_ifgsm_from_the_cli_reports_the_minimal_eps(capsys, tmp_path, digits_model):
    out = tmp_path / "ifgsm"
    code, _, err = run(capsys, "attack", "--model", "small_vgg_digits", "--images", "digits", "--limit", "4",
                       "--method", "ifgsm", "--eps", "0.3", "--out", str(out), "--quiet")
    assert code == 0, err
    df = pd.read_parquet(out / "results.parquet")
    flipped = df[df.success]
    assert len(flipped) > 0 and (flipped.min_eps > 0).all() and (flipped.min_eps <= 0.3 + 1e-6).all()


def test_interpretation_attack_from_the_cli(capsys, tmp_path, digits_model):
    """seed 004 from the command line: random targets, another base framework, extra parameters."""
    out = tmp_path / "adv2"
    code, text, _ = run(capsys, "attack", "--model", "small_vgg_digits", "--images", "digits", "--limit", "4",
                        "--method", "adv2", "--base", "cw", "--interpreter", "grad", "--target", "random",
                        "--steps", "30", "--param", "lam=5", "--param", "binary_search_steps=1", "--out", str(out))
    assert code == 0, text
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 4 and df.success.mean() >= 0.5  # 30 C&W steps flip most digits
