"""Bad input on the command line: exit code 2, exactly one line on stderr naming the flag, key or file,
and nothing written or changed anywhere (the whole working folder is snapshot before and after).

The Python API's own tables live in ``test_bad_inputs_api.py`` and ``test_bad_params.py``.
"""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import advlens as al
from advlens.cli import main

SPEC_OK = """study = "layer_shift"
model = "small_vgg_digits"
data = "digits"
split = "test"
strengths = [1.0]
limit = 2
[attack]
method = "fgsm"
eps = 0.05
"""


class _Payload:
    """A pickle that would create a file if it were ever unpickled with code execution."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


@pytest.fixture(scope="module")
def world(tmp_path_factory, digits_model) -> Path:
    """A working folder with a user's files, outputs of other commands and damaged inputs."""
    w = tmp_path_factory.mktemp("world")
    (w / "thesis").mkdir()
    (w / "thesis" / "thesis.txt").write_text("years of work")
    (w / "notes.txt").write_text("a user's file")
    al.data.save_images(al.load_images("digits", n=2).x, ["a", "b"], w / "photos")
    (w / "explained").mkdir()
    (w / "explained" / ".advlens.json").write_text(json.dumps({"command": "explain", "files": []}))
    # weights: a pickle with a payload, garbage, NaN tensors
    (w / "payload.pth").write_bytes(pickle.dumps(_Payload(str(w / "PWNED"))))
    (w / "garbage.pth").write_bytes(b"not a checkpoint at all")
    state = {k: v.clone() for k, v in digits_model.net.state_dict().items()}
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first].fill_(float("nan"))
    save_file(state, str(w / "nan.safetensors"))
    # a fitted detector and tampered copies
    det = al.detect.make("behavior", copies=2).fit(digits_model, al.load_images("digits", n=16, split="train").x)
    det.save(w / "det.safetensors")
    for name, meta_text in {"badjson": "{not json", "badtype": json.dumps({"kind": 5})}.items():
        (w / f"{name}.safetensors").write_bytes((w / "det.safetensors").read_bytes())
        (w / f"{name}.safetensors.json").write_text(meta_text)
    (w / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (w / "garbage.safetensors.json").write_text((w / "det.safetensors.json").read_text())
    # study specs
    (w / "ok.toml").write_text(SPEC_OK)
    bad = {"syntax": "study = [", "limit": 'limit = "two"', "fit": 'study = "detection"\nfit_size = "x"',
           "layers": "layers = 5", "explainers": 'explainers = "gradcam"', "strength": "strengths = [0]",
           "key": "strenghts = [1]", "study": 'study = "layer_shif"', "examples": "examples = -1",
           "attack": "attack = {eps = 1}", "entry": 'study = "mod_vid"\nmodels = [{model = "small_vgg_digits"}]',
           "inside": SPEC_OK.replace('data = "digits"', 'data = "photos"')}
    for name, text in bad.items():
        (w / f"{name}.toml").write_text(text)
    # study folders that are not finished / not studies
    for name, text in {"demo": json.dumps({"study": "demo"}), "truncated": '{"spec": {"stu',
                       "unknown": json.dumps({"spec": {"study": "nope"}})}.items():
        (w / f"run_{name}").mkdir()
        (w / f"run_{name}" / "spec.json").write_text(text)
        (w / f"run_{name}" / "results.parquet").write_bytes(b"")
    return w


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in sorted(root.rglob("*"))}


D = ["--model", "small_vgg_digits", "--images", "digits", "--limit", "2", "--quiet"]  # valid data, fast

CASES = [
    # argument parsing: one line, the flag named
    ([], "arguments are required: command"),
    (["nope"], "invalid choice: 'nope'"),
    (["attack", "--limit", "0"], "--limit: must be an integer >= 1, got '0'"),
    (["attack", "--limit", "-1"], "--limit"),
    (["attack", "--limit", "two"], "--limit"),
    (["explain", "--batch-size", "0"], "--batch-size"),
    (["explain", "--batch-size", "x"], "--batch-size"),
    (["attack", "--eps", "0"], "--eps: must be a number > 0"),
    (["attack", "--eps", "nan"], "--eps"),
    (["attack", "--eps", "-1"], "--eps"),
    (["attack", "--steps", "0"], "--steps"),
    (["attack", "--alpha", "0"], "--alpha"),
    (["attack", "--seed", "-1"], "--seed"),
    (["attack", "--chunk-size", "0"], "--chunk-size"),
    (["study", "--limit", "0"], "--limit"),
    (["study", "--batch-size", "0"], "--batch-size"),
    (["study", "--backend", "dask"], "--backend"),
    (["study", "--precision", "fp16"], "--precision"),
    (["study", "--compile", "fast"], "--compile"),
    (["detect", "score"], "detector_file"),
    (["detect", "eval", "det.safetensors", "--strengths", "0"], "--strengths"),
    (["detect", "eval", "det.safetensors", "--steps", "0"], "--steps"),
    (["detect", "fit", "--split", "val"], "--split"),
    (["defend", "eval", "--defense", "median", "--eot", "0"], "--eot"),
    (["defend", "train", "--data", "digits", "--out", "w.safetensors", "--epochs", "0"], "--epochs"),
    (["defend", "train", "--data", "mnist", "--out", "w.safetensors"], "--data"),
    (["defend", "train", "--data", "digits"], "--out"),
    (["train", "--data", "digits", "--epochs", "-1"], "--epochs"),
    (["train", "--data", "digits", "--epochs", "0"], "--epochs"),
    (["train"], "--data"),
    (["report"], "dir"),
    # names and files
    (["attack", "--model", "nope", "--out", "o"], "unknown model 'nope'"),
    (["attack", "--model", "small_vgg_digits", "--images", "nope", "--out", "o"], "image source 'nope'"),
    (["attack", *D[:2], "--images", "missing_dir/", "--out", "o"], "missing_dir"),
    (["attack", *D[:2], "--images", "/dev/zero", "--out", "o"], "/dev/zero"),
    (["attack", *D, "--weights", "missing.pth", "--out", "o"], "missing.pth"),
    (["attack", *D, "--weights", "payload.pth", "--out", "o"], "payload.pth"),
    (["attack", *D, "--weights", "garbage.pth", "--out", "o"], "garbage.pth"),
    (["attack", *D, "--weights", "nan.safetensors", "--out", "o"], "nan.safetensors"),
    (["attack", *D, "--method", "nope", "--out", "o"], "unknown attack 'nope'"),
    (["attack", *D, "--param", "loss_fn=x", "--out", "o"], "loss_fn"),
    (["attack", *D, "--param", "random_start=maybe", "--out", "o"], "random_start"),
    (["attack", *D, "--param", "nokey", "--out", "o"], "--param takes KEY=VALUE"),
    (["attack", *D, "--param", "=3", "--out", "o"], "--param takes KEY=VALUE"),
    (["attack", *D, "--param", "eps=true", "--out", "o"], "eps"),
    (["attack", *D, "--param", "bogus=1", "--out", "o"], "bogus"),
    (["attack", *D, "--target", "x", "--out", "o"], "--target"),
    (["attack", *D, "--target", "99", "--out", "o"], "target"),
    (["explain", *D, "--method", "nope", "--out", "o"], "nope"),
    (["explain", *D, "--layers", "nope", "--out", "o"], "nope"),
    # output folders and files: never touch what advlens did not write
    (["attack", *D, "--out", "thesis"], "--out thesis is not empty and is not an advlens output"),
    (["explain", *D, "--out", "thesis"], "--out thesis is not empty"),
    (["demo", "--model", "small_vgg_digits", "--images", "digits", "--limit", "2", "--out", "thesis"], "--out thesis"),
    (["detect", "eval", "det.safetensors", *D, "--out", "thesis"], "--out thesis"),
    (["attack", *D, "--out", "notes.txt"], "--out notes.txt is an existing file"),
    (["attack", *D[:2], "--images", "photos", "--out", "photos"], "--out photos is the input"),
    (["attack", *D[:2], "--images", "photos", "--out", "photos/sub"], "is inside the input"),
    (["attack", *D, "--out", "explained"], "holds the output of `advlens explain`"),
    (["attack", *D, "--out", "/proc/advlens-out"], "--out /proc/advlens-out is not writable"),
    (["detect", "fit", *D, "--out", "notes.txt"], "--out notes.txt exists"),
    (["detect", "score", "det.safetensors", *D, "--out", "notes.txt"], "--out notes.txt exists"),
    (["train", "--data", "digits", "--out", "notes.txt"], "--out notes.txt exists"),
    (["defend", "train", "--data", "digits", "--out", "notes.txt"], "--out notes.txt exists"),
    (["study", "ok.toml", "--out", "thesis"], "--out thesis is not empty and not an advlens study folder"),
    (["study", "ok.toml", "--out", "notes.txt"], "--out notes.txt is an existing file"),
    (["study", "ok.toml", "--out", "explained"], "holds the output of `advlens explain`"),
    (["study", "ok.toml", "--out", "/proc/advlens-study"], "not writable"),
    (["study", "inside.toml", "--out", "photos/run"], "inside the input"),
    # study specs: the key and the value named
    (["study", "--out", "s"], "give a spec file"),
    (["study", "missing.toml", "--out", "s"], "study spec not found: missing.toml"),
    (["study", "syntax.toml", "--out", "s"], "cannot parse study spec syntax.toml"),
    (["study", "limit.toml", "--out", "s"], "key 'limit': must be a valid integer, got 'two'"),
    (["study", "fit.toml", "--out", "s"], "key 'fit_size'"),
    (["study", "layers.toml", "--out", "s"], "key 'layers'"),
    (["study", "explainers.toml", "--out", "s"], "key 'explainers': must be a valid list, got 'gradcam'"),
    (["study", "strength.toml", "--out", "s"], "key 'strengths[0]'"),
    (["study", "key.toml", "--out", "s"], "unknown key 'strenghts'"),
    (["study", "study.toml", "--out", "s"], "unknown study 'layer_shif'"),
    (["study", "examples.toml", "--out", "s"], "key 'examples'"),
    (["study", "attack.toml", "--out", "s"], "key 'attack'"),
    (["study", "entry.toml", "--out", "s"], "key 'models[0].data': is required"),
    (["study", "--preset", "seed09", "--out", "s"], "unknown study preset 'seed09'"),
    # report on folders that are not finished studies
    (["report", "nowhere"], "nowhere is not a finished study folder"),
    (["report", "thesis"], "thesis is not a finished study folder"),
    (["report", "run_demo"], "run_demo was written by an older `advlens demo`"),
    (["report", "run_truncated"], "run_truncated/spec.json"),
    (["report", "run_unknown"], "unknown study in run_unknown/spec.json"),
    # detectors
    (["detect", "score", "missing.safetensors", *D], "missing.safetensors"),
    (["detect", "score", "badjson.safetensors", *D], "badjson.safetensors"),
    (["detect", "score", "badtype.safetensors", *D], "badtype.safetensors"),
    (["detect", "score", "garbage.safetensors", *D], "garbage.safetensors"),
    (["detect", "fit", "--detector", "nope", *D, "--out", "d.safetensors"], "unknown detector 'nope'"),
    (["detect", "fit", "--param", "copies=0", *D, "--out", "d.safetensors"], "copies"),
    (["defend", "eval", "--defense", "nope", *D], "nope"),
    (["defend", "eval", "--defense", "median", "--defense-param", "k=0", *D], "k"),
    (["defend", "eval", "--defense", "median", "--attack", "nope", *D], "unknown attack 'nope'"),
    # your own model (issue 18): unknown references, flags, a factory that is not one, a pickle as weights
    (["layers", "timm:resnet181"], "did you mean 'resnet18'"),
    (["layers", "torchvision:resnet19"], "did you mean 'resnet18'"),
    (["layers", "nope"], "or a reference timm:NAME"),
    (["layers", "missing.py:build"], "missing.py"),
    (["layers", "torchvision:resnet18", "--weights", "payload.pth"], "payload.pth"),
    (["layers", "torchvision:resnet18", "--input-size", "4"], "--input-size"),
    (["attack", *D, "--mean", "0.5,0.5"], "--mean: must be three comma-separated numbers"),
    (["attack", *D, "--num-classes", "0"], "--num-classes"),
    (["attack", "--model", "small_vgg_digits", "--num-classes", "3", "--images", "digits", "--out", "o"],
     "has no option 'num_classes'"),
    (["explain", "--model", "torchvision:resnet18", "--input-size", "32", "--images", "missing_table.csv",
      "--out", "o"], "missing_table.csv"),
    # the explorer (issue 19): a port that cannot exist, a RUN_DIR that is no study folder
    (["explore", "--port", "70000", "--no-browser"], "--port must be at most 65535"),
    (["explore", "nope_dir", "--no-browser", "--port", "8799"], "RUN_DIR nope_dir is not a folder"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a)[:60] or "empty" for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(world, args, message, capsys, monkeypatch):
    monkeypatch.chdir(world)
    before = _snapshot(world)
    try:
        code = main(args)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert message in err, err
    assert _snapshot(world) == before  # nothing written, moved or removed
    assert not (world / "PWNED").exists()  # no pickle ever ran


def test_the_table_covers_every_command():
    from advlens.cli import _parser

    commands = {a[0] for a, _ in CASES if a}
    sub = next(a for a in _parser()._actions if a.dest == "command")
    assert set(sub.choices) - {"models"} <= commands  # `models` takes no input that can be wrong
    assert len(CASES) >= 80


def test_a_real_process_prints_one_line_and_no_traceback(world):
    """In a separate process (logging and warnings included): one line, exit 2, for a pickle as weights."""
    proc = subprocess.run([sys.executable, "-m", "advlens.cli", "attack", *D, "--weights", "payload.pth", "--out", "o"],
                          cwd=world, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "payload.pth" in proc.stderr and not (world / "PWNED").exists() and not (world / "o").exists()


def test_overwrite_writes_beside_the_users_files_and_a_rerun_replaces_only_its_own(tmp_path, digits_model, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    assert main(["attack", *D, "--out", str(out), "--overwrite"]) == 0
    first = sorted(p.name for p in (out / "images").iterdir())
    assert (out / "thesis.txt").read_text() == "years of work" and len(first) == 2
    assert main(["attack", *D[:-3], "--limit", "1", "--quiet", "--out", str(out)]) == 0  # our folder now
    assert len(list((out / "images").iterdir())) == 1  # the previous run's images go, the user's file stays
    assert (out / "thesis.txt").read_text() == "years of work"
    assert oct((out / "images").stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_names_that_collide_once_sanitized_get_distinct_outputs(tmp_path, digits_model):
    src = tmp_path / "src"
    x = al.load_images("digits", n=3).x
    src.mkdir()
    from PIL import Image

    for name, img in zip(["a b", "a_b", "a?b"], x):
        Image.fromarray((img.permute(1, 2, 0) * 255).byte().numpy()).save(src / f"{name}.png")
    out = tmp_path / "out"
    assert main(["attack", "--model", "small_vgg_digits", "--images", str(src), "--quiet", "--out", str(out)]) == 0
    import pandas as pd

    df = pd.read_parquet(out / "results.parquet")
    assert len(set(df.file)) == 3 and all((out / f).is_file() for f in df.file)
    assert sorted(df.image) == sorted(["a b", "a_b", "a?b"])


def test_weights_tensor_of_wrong_shape_is_one_line_naming_the_file(tmp_path, digits_model, capsys):
    state = {k: v.clone() for k, v in digits_model.net.state_dict().items()}
    k = next(iter(state))
    state[k] = torch.zeros(1)
    save_file(state, str(tmp_path / "w.safetensors"))
    code = main(["attack", *D, "--weights", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "w.safetensors" in err
