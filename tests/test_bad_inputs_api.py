"""Issue 15: every bad input given to the Python API (models, weights, images, labels, detector files)
gives one ``AdvlensError`` line that names the argument or the file — never a traceback, a hang or a
silently wrong result."""
from __future__ import annotations

import io
import json
import os
import pickle
import socket
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import advlens as al
from advlens._checks import AdvlensError, check_device, check_int
from advlens.data import ImageBatch, load_images
from advlens.detect import BehaviorDeviation
from advlens.models.small_vgg import SmallVGG, train_small_vgg
from advlens.models.weights import read_state_dict

#: on tests that make FIFOs: one that blocked would hang, so fail instead
no_hang = pytest.mark.timeout(60)


def _refused(fn: Callable[[], object], *names: str) -> str:
    """Run ``fn``; it must raise one AdvlensError line containing every one of ``names``."""
    with pytest.raises(AdvlensError) as err:
        fn()
    msg = str(err.value)
    assert msg and "\n" not in msg, msg
    for name in names:
        assert name in msg, f"{name!r} not in {msg!r}"
    return msg


class SomeClass:
    """Pickled by ``torch.save(SomeClass(), f)``: a checkpoint that is not weights-only."""


class _Payload:
    """Unpickling this would create ``marker`` (what an attacker's payload does, harmlessly)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------- load_model: argument types (1, 11)
@pytest.mark.parametrize("kwargs, names", [
    ({"name": "small_vgg_digits", "weights": 5}, ["weights", "int 5"]),
    ({"name": "small_vgg_digits", "weights": ["w.pth"]}, ["weights", "list"]),
    ({"name": "small_vgg_digits", "weights": ""}, ["weights", "empty"]),
    ({"name": 5}, ["model name", "5"]),
    ({"name": "small_vgg_digits", "weights": "random", "device": "gpu7"}, ["device", "'gpu7'"]),
    ({"name": "small_vgg_digits", "weights": "random", "device": 3.5}, ["device", "float"]),
    ({"name": "small_vgg_digits", "weights": "random", "seed": "x"}, ["seed", "'x'"]),
    ({"name": "small_vgg_digits", "weights": "random", "seed": -1}, ["seed", "-1"]),
    ({"name": "small_vgg_digits", "weights": "random", "seed": 1.5}, ["seed", "1.5"]),
    ({"name": "small_vgg_digits", "weights": "random", "epochs": 3}, ["no option 'epochs'", "seed"]),
])
def test_load_model_refuses_bad_arguments(kwargs: dict, names: list[str]) -> None:
    _refused(lambda: al.load_model(**kwargs), *names)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_one_line(device: str) -> None:
    _refused(lambda: al.load_model("small_vgg_digits", weights="random", device=device), "device", "CUDA")


def test_shared_checks() -> None:
    assert check_int(np.int64(3), "k", 1) == 3 and check_device("cpu") == torch.device("cpu")
    for bad in (True, 2.0, "2", None, 0):
        _refused(lambda bad=bad: check_int(bad, "k", 1), "k must be an int >= 1")
    _refused(lambda: check_int(11, "k", 1, 10), "k must be an int in [1, 10], got 11")


# ---------------------------------------------------------------- weights files (2, 3)
def _small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return SmallVGG(10).state_dict()


def test_weights_with_nan_or_inf_name_the_file_and_the_tensor(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = _small_state()
    state["features.block2_conv1_conv.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    _refused(lambda: al.load_model("small_vgg_digits", weights=tmp_path / "nan.pth"),
             "nan.pth", "'features.block2_conv1_conv.weight'", "NaN")
    state = _small_state()
    state["fc.bias"][3] = float("-inf")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "inf.safetensors"))
    _refused(lambda: read_state_dict(tmp_path / "inf.safetensors"), "inf.safetensors", "'fc.bias'", "infinite")


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump", "torch.save legacy"])
def test_pickles_never_run_and_get_one_clean_line(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "payload.pth"
    if how == "pickle.dump":
        bad.write_bytes(pickle.dumps({"w": _Payload(marker)}))
    else:
        torch.save({"w": _Payload(marker)}, bad, _use_new_zipfile_serialization=how == "torch.save")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msg = _refused(lambda: al.load_model("small_vgg_digits", weights=str(bad)),
                       "payload.pth", "not a weights-only checkpoint", f"{open.__module__}.open", "never runs pickles")
    assert not marker.exists(), "the pickle's payload ran"
    assert not [w for w in caught if "torch" in str(w.filename)], [str(w.message)[:80] for w in caught]
    assert "Weights only load failed" not in msg


def test_pickled_class_is_named(tmp_path: Path) -> None:
    torch.save(SomeClass(), tmp_path / "obj.pth")
    msg = _refused(lambda: read_state_dict(tmp_path / "obj.pth"), "obj.pth", "SomeClass", "save a state_dict")
    assert msg.endswith("save a state_dict or safetensors")


@no_hang
def test_weights_that_are_not_regular_files(tmp_path: Path) -> None:
    _refused(lambda: al.load_model("small_vgg_digits", weights="/dev/zero"), "/dev/zero", "character device")
    _refused(lambda: al.load_model("small_vgg_digits", weights=tmp_path), str(tmp_path), "folder")
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    _refused(lambda: al.load_model("small_vgg_digits", weights=fifo), "pipe.pth", "named pipe")


def test_our_safetensors_with_edited_metadata(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in _small_state().items()}
    for name, meta in [("badjson", "{oops"), ("list", "[1]"), ("labels", json.dumps({"labels": ["a", "b"]})),
                       ("size", json.dumps({"input_size": [32, "x"]}))]:
        path = tmp_path / f"{name}.safetensors"
        save_file(state, str(path), metadata={"advlens": meta})
        _refused(lambda path=path: al.load_model("small_vgg_digits", weights=path), path.name)


# ---------------------------------------------------------------- special files (4)
def _short_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="al", dir="/tmp"))  # AF_UNIX paths must be short


@no_hang
def test_load_images_refuses_devices_fifos_and_sockets(tmp_path: Path) -> None:
    _refused(lambda: load_images("/dev/zero"), "/dev/zero", "character device")
    _refused(lambda: load_images(["/dev/zero"]), "/dev/zero", "character device")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    _refused(lambda: load_images(fifo), "pipe.png", "named pipe")
    _refused(lambda: load_images(str(fifo)), "pipe.png", "named pipe")
    _refused(lambda: load_images(tmp_path), "pipe.png", "named pipe")  # inside a folder: named, not skipped
    Image.new("RGB", (8, 8), "red").save(tmp_path / "ok.png")
    _refused(lambda: load_images([tmp_path / "ok.png", fifo]), "pipe.png", "named pipe")
    classes = tmp_path / "classes"
    (classes / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(classes / "cat" / "a.png")
    os.mkfifo(classes / "cat" / "b.jpg")
    _refused(lambda: load_images(classes), "b.jpg", "named pipe")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    _refused(lambda: load_images([tmp_path / "ok.png", tmp_path / "gone.png"]), "gone.png")
    short = _short_dir()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(short / "s.png"))
        _refused(lambda: load_images(short / "s.png"), "s.png", "socket")
        _refused(lambda: load_images(short), "s.png", "socket")
    finally:
        sock.close()
        os.unlink(short / "s.png")
        short.rmdir()


# ---------------------------------------------------------------- corrupt images (5, 7)
@pytest.fixture(scope="module")
def chelsea_jpeg(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    import skimage.data

    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_corrupt_and_truncated_jpegs_are_one_line(tmp_path: Path, chelsea_jpeg: bytes) -> None:
    data = bytearray(chelsea_jpeg)
    start = data.find(b"\xff\xda") + 2000  # inside the scan data
    data[start:start + 500] = np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes()
    (tmp_path / "scrambled.jpg").write_bytes(bytes(data))
    _refused(lambda: load_images(tmp_path / "scrambled.jpg"), "scrambled.jpg", "corrupt")
    (tmp_path / "half.jpg").write_bytes(chelsea_jpeg[: len(chelsea_jpeg) // 2])
    _refused(lambda: load_images(tmp_path / "half.jpg"), "half.jpg", "truncated")
    (tmp_path / "header.jpg").write_bytes(chelsea_jpeg[: chelsea_jpeg.find(b"\xff\xda") + 10])
    _refused(lambda: load_images(tmp_path / "header.jpg"), "header.jpg")


def test_decoder_warnings_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 pixels: PIL warns (bomb?) but decodes
    with pytest.warns(Image.DecompressionBombWarning, match=r"big\.png.*decompression bomb"):
        assert load_images(tmp_path / "big.png", 8).x.shape == (1, 3, 8, 8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # > 2× the limit: PIL refuses
    _refused(lambda: load_images(tmp_path / "big.png", 8), "big.png", "too large to decode safely")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_float_tiff_with_nan_or_inf_names_the_file(tmp_path: Path, bad: float) -> None:
    arr = np.full((16, 16), 0.5, dtype=np.float32)
    arr[3, 4] = bad
    Image.fromarray(arr, mode="F").save(tmp_path / "float.tif")
    _refused(lambda: load_images(tmp_path / "float.tif", 8), "float.tif", "NaN or infinite")
    _refused(lambda: load_images(tmp_path, 8), "float.tif", "NaN or infinite")


# ---------------------------------------------------------------- sizes that cannot fit (6)
@pytest.mark.parametrize("source, kwargs, names", [
    ("shapes", {"n": 10**12}, ["n=1000000000000", "GiB", "lower n or size"]),
    ("digits", {"n": 10**11, "size": 64}, ["n=100000000000", "64×64", "GiB"]),
    ("samples", {"size": 100000}, ["size", "100000"]),
    ("samples", {"size": (224, 10**6)}, ["size", "1000000"]),
    ("shapes", {"size": 0}, ["size", "0"]),
    ("shapes", {"size": -5}, ["size", "-5"]),
    ("shapes", {"size": 8193}, ["size", "8193", "8192"]),
    ("shapes", {"size": 2.5}, ["size", "2.5"]),
    ("shapes", {"n": 2.0}, ["n", "2.0"]),
    ("shapes", {"n": True}, ["n", "True"]),
])
def test_sizes_that_cannot_fit_are_refused_before_allocating(source: str, kwargs: dict, names: list[str]) -> None:
    _refused(lambda: load_images(source, **kwargs), *names)


def test_folder_size_checked_against_available_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import advlens._checks as _checks

    for k in range(3):
        Image.new("RGB", (8, 8), "red").save(tmp_path / f"{k}.png")
    monkeypatch.setattr(_checks, "free_memory", lambda device: 2**30)  # 1 GiB free
    _refused(lambda: load_images(tmp_path, size=8192), "n=3", "8192×8192", "2.2 GiB", "1.0 GiB")
    _refused(lambda: load_images(tmp_path, size=4096, n=20), "n=20", "4096×4096")
    assert load_images(tmp_path, size=64).x.shape == (3, 3, 64, 64)


# ---------------------------------------------------------------- labels (8)
@pytest.mark.parametrize("y, labels, names", [
    (torch.tensor([0.5, 1.0]), None, ["ImageBatch.y", "torch.float32", "not scores"]),
    (torch.tensor([0, 1], dtype=torch.int32), None, ["ImageBatch.y", "torch.int32", "y.long()"]),
    (torch.tensor([0, 1, 2]), None, ["ImageBatch.y", "[3]"]),
    ([0, 1], None, ["ImageBatch.y", "list"]),
    (torch.tensor([0, 2]), ["a", "b"], ["ImageBatch.y", "[-1, 1]"]),
    (torch.tensor([0, -2]), None, ["ImageBatch.y", "-2"]),
    (torch.tensor([0, 1]), "ab", ["ImageBatch.labels"]),
])
def test_imagebatch_refuses_bad_labels(y: object, labels: object, names: list[str]) -> None:
    _refused(lambda: ImageBatch(torch.zeros(2, 3, 4, 4), y, ["a", "b"], labels=labels), *names)


def test_imagebatch_refuses_bad_names_and_images() -> None:
    _refused(lambda: ImageBatch(torch.zeros(2, 3, 4, 4), None, None), "ImageBatch.names")
    _refused(lambda: ImageBatch(torch.zeros(2, 3, 4, 4), None, [1, 2]), "ImageBatch.names", "int")
    _refused(lambda: ImageBatch(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), None, ["a", "b"]), "ImageBatch.x", "uint8")
    ok = ImageBatch(torch.zeros(2, 3, 4, 4), torch.tensor([-1, 1]), ["a", "b"], labels=["u", "v"])
    assert ok[1].y.tolist() == [1]


# ---------------------------------------------------------------- training epochs (10)
@pytest.mark.parametrize("kwargs, names", [
    ({"epochs": 0}, ["epochs", "0"]), ({"epochs": -1}, ["epochs", "-1"]), ({"epochs": 2.5}, ["epochs", "2.5"]),
    ({"epochs": "3"}, ["epochs", "'3'"]), ({"seed": "x"}, ["seed", "'x'"]), ({"out": 7}, ["out", "int"]),
])
def test_train_small_vgg_checks_its_arguments_first(kwargs: dict, names: list[str]) -> None:
    _refused(lambda: train_small_vgg("digits", **kwargs), *names)


# ---------------------------------------------------------------- tampered detector files (9)
@pytest.fixture(scope="module")
def digits_model() -> al.ClassifierModel:
    """small_vgg_digits with random weights: file checks need its name and layers, not its accuracy (and
    this module then never waits for the trained model)."""
    torch.manual_seed(0)
    return al.load_model("small_vgg_digits", weights="random")


@pytest.fixture(scope="module")
def saved_detector(digits_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    x = load_images("digits", split="train", n=16).x
    det = al.detect.make("behavior", copies=2, pca="dataset", rule="calibrated").fit(digits_model, x)  # has tensors
    return det.save(tmp_path_factory.mktemp("det") / "bd.safetensors")


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda m: m.__setitem__(key, value)


def _set_param(key: str, value: object) -> Callable[[dict], None]:
    return lambda m: m["params"].__setitem__(key, value)


META_EDITS: dict[str, tuple[Callable[[dict], object], str]] = {
    "kind unknown": (_set("kind", "magic"), "'magic'"),
    "kind wrong type": (_set("kind", 5), "'kind' must be a JSON string"),
    "model wrong type": (_set("model", None), "'model'"),
    "threshold text": (_set("threshold", "high"), "'threshold'"),
    "threshold bool": (_set("threshold", True), "'threshold'"),
    "threshold nan": (_set("threshold", float("nan")), "finite"),
    "params list": (_set("params", [1, 2]), "'params'"),
    "tensors wrong": (_set("tensors", {"mean": [3]}), "tensor 'mean'"),
    "no kind": (lambda m: m.pop("kind"), "no 'kind' key"),
    "no params": (lambda m: m.pop("params"), "no 'params' key"),
    "no threshold": (lambda m: m.pop("threshold"), "no 'threshold' key"),
    "no tensors": (lambda m: m.pop("tensors"), "no 'tensors' key"),
    "param missing": (lambda m: m["params"].pop("copies"), "missing parameter 'copies'"),
    "param unknown": (_set_param("colour", "red"), "unknown parameter 'colour'"),
    "copies text": (_set_param("copies", "many"), "parameter 'copies' must be an int"),
    "copies too few": (_set_param("copies", 1), "copies"),
    "variance text": (_set_param("variance", "x"), "parameter 'variance' must be a finite number"),
    "variance out of range": (_set_param("variance", 7), "variance must be in (0, 1]"),
    "layer int": (_set_param("layer", 5), "parameter 'layer' must be a layer name"),
    "layer unknown": (_set_param("layer", "block9_conv9"), "unknown layer"),
    "batch_size zero": (_set_param("batch_size", 0), "parameter 'batch_size'"),
}


@pytest.mark.parametrize("case", list(META_EDITS))
def test_edited_detector_metadata_is_one_line(saved_detector: Path, digits_model, tmp_path: Path, case: str) -> None:
    edit, expected = META_EDITS[case]
    path = tmp_path / "d.safetensors"
    path.write_bytes(saved_detector.read_bytes())
    meta = json.loads(Path(f"{saved_detector}.json").read_text())
    edit(meta)
    Path(f"{path}.json").write_text(json.dumps(meta))
    msg = _refused(lambda: BehaviorDeviation.load(path, digits_model), expected)
    assert "d.safetensors" in msg


@pytest.mark.parametrize("text, expected", [
    ("{not json", "not valid JSON"), ("", "not valid JSON"), ("[1, 2]", "must be a JSON object"),
    ("\udcff", "not UTF-8"), ("[" * 100000 + "]" * 100000, "d.safetensors.json"),
])
def test_unreadable_detector_metadata(saved_detector: Path, digits_model, tmp_path: Path, text: str,
                                      expected: str) -> None:
    path = tmp_path / "d.safetensors"
    path.write_bytes(saved_detector.read_bytes())
    Path(f"{path}.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    _refused(lambda: BehaviorDeviation.load(path, digits_model), expected, "d.safetensors.json")


def _rewrite_tensors(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        from safetensors.torch import load_file, save_file

        state = load_file(str(path))
        edit(state)
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))

    return apply


def _nan_mean(s: dict[str, torch.Tensor]) -> None:
    s["mean"][0] = float("nan")


TENSOR_EDITS: dict[str, tuple[Callable[[Path], None], str]] = {
    "dropped tensor": (_rewrite_tensors(lambda s: s.pop("components")), "lacks tensor 'components'"),
    "added tensor": (_rewrite_tensors(lambda s: s.__setitem__("extra", torch.zeros(2))), "holds tensor 'extra'"),
    "reshaped tensor": (_rewrite_tensors(lambda s: s.__setitem__("mean", s["mean"].view(3, -1))), "tensor 'mean'"),
    "other dtype": (_rewrite_tensors(lambda s: s.__setitem__("mean", s["mean"].double())), "float64"),
    "nan tensor": (_rewrite_tensors(_nan_mean), "NaN"),
    "not safetensors": (lambda p: p.write_bytes(b"\x00" * 64), "not a safetensors file"),
    "empty file": (lambda p: p.write_bytes(b""), "not a safetensors file"),
    "a torch.save pickle": (lambda p: torch.save({"mean": torch.zeros(3)}, p), "not a safetensors file"),
    "a folder": (lambda p: (p.unlink(), p.mkdir()), "is a folder"),
    "a fifo": (lambda p: (p.unlink(), os.mkfifo(p)), "named pipe"),
    "missing": (lambda p: p.unlink(), "not found"),
}


@pytest.mark.parametrize("case", list(TENSOR_EDITS))
def test_tampered_detector_tensors_are_one_line(saved_detector: Path, digits_model, tmp_path: Path, case: str) -> None:
    edit, expected = TENSOR_EDITS[case]
    path = tmp_path / "d.safetensors"
    path.write_bytes(saved_detector.read_bytes())
    Path(f"{path}.json").write_text(Path(f"{saved_detector}.json").read_text())
    edit(path)
    _refused(lambda: BehaviorDeviation.load(path, digits_model), expected, "d.safetensors")
    _refused(lambda: al.detect.load(path, digits_model), expected, "d.safetensors")


def test_untampered_detector_still_loads(saved_detector: Path, digits_model) -> None:
    det = al.detect.load(saved_detector, digits_model)
    assert isinstance(det, BehaviorDeviation) and det.copies == 2
    assert set(det.state) == {"mean", "components"}


def test_a_jpeg_with_damaged_scan_data_that_still_decodes_is_reported(tmp_path: Path, chelsea_jpeg: bytes) -> None:
    """Pillow steps over damaged scan data silently; libjpeg's own report is re-issued naming the file."""
    import warnings

    data = bytearray(chelsea_jpeg)
    start = data.find(b"\xff\xda") + 200
    del data[start:start + 64]  # a chunk cut out of the scan: decodes, with damaged blocks
    (tmp_path / "cut.jpg").write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = load_images(tmp_path / "cut.jpg")
    assert batch.x.shape[0] == 1
    reports = [str(w.message) for w in caught if "JPEG decoder reports" in str(w.message)]
    assert reports and "cut.jpg" in reports[0] and "Corrupt JPEG data" in reports[0], [str(w.message) for w in caught]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (tmp_path / "ok.jpg").write_bytes(chelsea_jpeg)
        load_images(tmp_path / "ok.jpg")
    assert not [w for w in caught if "JPEG decoder" in str(w.message)]
