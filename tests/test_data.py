"""Tests for advlens.data: built-in sources, files and folders, ImageBatch, and bad input."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advlens._checks import AdvlensError
from advlens.data import ImageBatch, imagenet_labels, list_sources, load_images


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every loader must work offline: any connection attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("advlens.data tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _check_images(b: ImageBatch, n: int, size: tuple[int, int]) -> None:
    assert b.x.shape == (n, 3, *size)
    assert b.x.dtype == torch.float32
    assert float(b.x.min()) >= 0.0 and float(b.x.max()) <= 1.0
    assert torch.isfinite(b.x).all()
    assert len(b) == n == len(b.names)


def _save(path: Path, arr: np.ndarray, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kwargs)
    return path


def _solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


# ---------------------------------------------------------------- built-in sources
def test_list_sources_and_imagenet_labels() -> None:
    assert list_sources() == ["samples", "digits", "lfw", "shapes"]
    names = imagenet_labels()
    assert len(names) == 1000 and len(set(names)) >= 990
    assert names[285] == "Egyptian cat" and names[967] == "espresso" and names[652] == "military uniform"


@pytest.fixture(scope="module")
def samples() -> ImageBatch:
    return load_images("samples")


def test_samples_real_photos_with_imagenet_labels(samples: ImageBatch) -> None:
    _check_images(samples, len(samples), (224, 224))
    assert len(samples) >= 8 and samples.masks is None
    by_name = dict(zip(samples.names, samples.y.tolist()))
    assert by_name["chelsea"] == 285 and by_name["coffee"] == 967 and by_name["grace_hopper"] == 652
    assert samples.labels is not None and samples.labels[by_name["chelsea"]] == "Egyptian cat"
    assert by_name["astronaut"] == -1
    assert len(set(samples.names)) == len(samples)
    # real photos: no two alike, each with real texture
    assert (samples.x.flatten(1).std(dim=1) > 0.05).all()
    # grey photos (camera, coins) are converted to RGB with equal channels
    cam = samples.x[samples.names.index("camera")]
    assert torch.equal(cam[0], cam[1]) and torch.equal(cam[1], cam[2])
    # coffee is a warm-coloured image: red above blue on average
    coffee = samples.x[samples.names.index("coffee")]
    assert coffee[0].mean() > coffee[2].mean() + 0.1


def test_samples_sizes_subsets_and_views(samples: ImageBatch) -> None:
    small = load_images("samples", 48, n=2)
    _check_images(small, 2, (48, 48))
    assert small.names == ["chelsea", "coffee"] and small.y.tolist() == [285, 967]
    _check_images(load_images("samples", (40, 64), n=1), 1, (40, 64))

    count = len(samples)
    more = load_images("samples", 32, n=count + 3, seed=1)
    _check_images(more, count + 3, (32, 32))
    assert more.names[count:] == [f"{nm}#1" for nm in samples.names[:3]]
    assert more.y[count:].tolist() == samples.y[:3].tolist()
    assert not torch.allclose(more.x[count], more.x[0])  # a view is a different crop
    again = load_images("samples", 32, n=count + 3, seed=1)
    other = load_images("samples", 32, n=count + 3, seed=2)
    assert torch.equal(again.x, more.x)
    assert torch.equal(other.x[:count], more.x[:count]) and not torch.equal(other.x[count:], more.x[count:])


def test_digits_split_is_fixed_stratified_and_disjoint() -> None:
    full = load_images("digits")
    _check_images(full, 1797, (32, 32))
    assert full.labels == [str(d) for d in range(10)]
    assert full.y.dtype == torch.int64 and set(full.y.tolist()) == set(range(10))
    assert torch.equal(full.x[:, 0], full.x[:, 2]) and float(full.x.max()) == 1.0
    train, test = load_images("digits", split="train"), load_images("digits", split="test")
    assert len(train) + len(test) == 1797
    assert not set(train.names) & set(test.names)
    assert set(train.names) | set(test.names) == set(full.names)
    assert 0.19 < len(test) / 1797 < 0.21
    counts = torch.bincount(test.y, minlength=10).float() / torch.bincount(full.y, minlength=10).float()
    assert ((counts - 0.2).abs() < 0.02).all()  # every class ~20 % in test
    # deterministic, and independent of the subsampling seed
    assert load_images("digits", split="test", seed=5).names == test.names
    sub_a = load_images("digits", 16, n=50, split="test", seed=1)
    sub_b = load_images("digits", 16, n=50, split="test", seed=1)
    sub_c = load_images("digits", 16, n=50, split="test", seed=2)
    _check_images(sub_a, 50, (16, 16))
    assert sub_a.names == sub_b.names and torch.equal(sub_a.x, sub_b.x)
    assert sub_a.names != sub_c.names and set(sub_a.names) <= set(test.names)
    with pytest.raises(AdvlensError, match="only 359 images"):
        load_images("digits", n=400, split="test")


def test_lfw_faces_and_non_faces() -> None:
    b = load_images("lfw")
    _check_images(b, 200, (32, 32))
    assert b.labels == ["non-face", "face"]
    assert b.y[:100].eq(1).all() and b.y[100:].eq(0).all()
    train, test = load_images("lfw", 25, split="train"), load_images("lfw", 25, split="test")
    assert (len(train), len(test)) == (160, 40) and int(test.y.sum()) == 20
    assert not set(train.names) & set(test.names)


def test_shapes_deterministic_with_true_masks() -> None:
    a, b = load_images("shapes", n=60, seed=3), load_images("shapes", n=60, seed=3)
    c = load_images("shapes", n=60, seed=4)
    _check_images(a, 60, (32, 32))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.x, c.x)
    assert a.masks is not None and a.masks.dtype == torch.bool and a.masks.shape == (60, 32, 32)
    assert a.labels is not None and len(a.labels) >= 4 and "circle" in a.labels
    assert torch.bincount(a.y, minlength=len(a.labels)).tolist() == [12] * 5  # balanced classes
    area = a.masks.flatten(1).sum(1)
    assert (area > 10).all() and (area < 0.6 * 32 * 32).all()
    border = a.masks[:, 0].any(1) | a.masks[:, -1].any(1) | a.masks[:, :, 0].any(1) | a.masks[:, :, -1].any(1)
    assert not border.any()  # every shape lies inside the image
    # the mask marks the drawn object: its colour differs from the background's
    m = a.masks[:, None].float()
    inside = (a.x * m).sum((2, 3)) / m.sum((2, 3))
    outside = (a.x * (1 - m)).sum((2, 3)) / (1 - m).sum((2, 3))
    assert ((inside - outside).abs().sum(1) > 0.15).all()
    # default count, non-square size, splits of the same generated set
    _check_images(load_images("shapes", (24, 40)), 200, (24, 40))
    tr, te = load_images("shapes", n=100, split="train"), load_images("shapes", n=100, split="test")
    assert len(tr) + len(te) == 100 and not set(tr.names) & set(te.names)
    full = load_images("shapes", n=100)
    assert torch.equal(te.x, full.x[[full.names.index(nm) for nm in te.names]])


# ---------------------------------------------------------------- files and folders
def test_flat_folder_single_file_and_list(tmp_path: Path) -> None:
    _save(tmp_path / "b_red.png", _solid(40, 30, (255, 0, 0)))
    _save(tmp_path / "a_grey.png", np.full((50, 50), 128, dtype=np.uint8))  # L mode
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)  # fully transparent -> white
    _save(tmp_path / "c_clear.png", rgba)
    _save(tmp_path / "d.jpg", _solid(64, 64, (0, 0, 255)), quality=95)
    (tmp_path / "README.txt").write_text("not an image")
    b = load_images(tmp_path)
    _check_images(b, 4, (224, 224))
    assert b.names == ["a_grey", "b_red", "c_clear", "d"] and b.y is None and b.labels is None
    assert torch.allclose(b.x[0], torch.full((3, 224, 224), 128 / 255), atol=1e-3)
    assert torch.allclose(b.x[1].mean((1, 2)), torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)
    assert torch.allclose(b.x[2], torch.ones(3, 224, 224))
    assert b.x[3, 2].mean() > 0.95 and b.x[3, :2].mean() < 0.05

    one = load_images(str(tmp_path / "b_red.png"), 16)
    _check_images(one, 1, (16, 16))
    assert one.names == ["b_red"]
    lst = load_images([tmp_path / "d.jpg", str(tmp_path / "b_red.png")], size=(8, 12))
    _check_images(lst, 2, (8, 12))
    assert lst.names == ["d", "b_red"]
    # n below the count: seeded subset; above: extra views
    assert len(load_images(tmp_path, 8, n=2, seed=0)) == 2
    assert load_images(tmp_path, 8, n=5).names[4] == "a_grey#1"


def test_center_crop_keeps_the_middle(tmp_path: Path) -> None:
    wide = np.concatenate([_solid(60, 60, c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]], axis=1)
    b = load_images(_save(tmp_path / "wide.png", wide), 30)
    assert torch.allclose(b.x[0].mean((1, 2)), torch.tensor([0.0, 1.0, 0.0]), atol=0.02)


def test_image_folder_layout(tmp_path: Path) -> None:
    _save(tmp_path / "dog" / "d1.png", _solid(10, 10, (0, 0, 255)))
    _save(tmp_path / "cat" / "c1.png", _solid(10, 10, (255, 0, 0)))
    _save(tmp_path / "cat" / "c2.jpg", _solid(12, 16, (250, 0, 0)))
    (tmp_path / "cat" / "notes.md").write_text("skip me")
    b = load_images(str(tmp_path), 8)
    _check_images(b, 3, (8, 8))
    assert b.labels == ["cat", "dog"]
    assert b.names == ["cat/c1", "cat/c2", "dog/d1"] and b.y.tolist() == [0, 0, 1]
    assert b.x[2, 2].mean() > 0.95


# ---------------------------------------------------------------- ImageBatch
def test_image_batch_indexing_device_and_split() -> None:
    b = load_images("shapes", 16, n=50, seed=1)
    assert b[3].names == [b.names[3]] and b[-1].names == [b.names[-1]]
    sl = b[10:20]
    assert len(sl) == 10 and torch.equal(sl.x, b.x[10:20]) and torch.equal(sl.masks, b.masks[10:20])
    idx = torch.tensor([4, 0, 7])
    picked = b[idx]
    assert picked.names == [b.names[i] for i in (4, 0, 7)] and torch.equal(picked.y, b.y[idx])
    assert len(b[b.y == 0]) == int((b.y == 0).sum()) and len(b[[1, 2]]) == 2
    assert b.to("cpu").x.device.type == "cpu" and b.to("cpu").labels == b.labels
    train, test = b.split(0.2, seed=0)
    assert len(train) + len(test) == 50 and not set(train.names) & set(test.names)
    assert torch.bincount(test.y, minlength=5).tolist() == [2] * 5
    assert b.split(0.2, seed=0)[1].names == test.names and b.split(0.2, seed=1)[1].names != test.names
    both = ImageBatch.cat([train, test])
    assert len(both) == 50 and sorted(both.names) == sorted(b.names) and both.masks is not None
    with pytest.raises(AdvlensError, match="out of range"):
        b[50]
    with pytest.raises(AdvlensError, match="names"):
        ImageBatch(torch.zeros(2, 3, 4, 4), None, ["one"])
    with pytest.raises(AdvlensError, match="test_fraction"):
        b.split(1.5)


# ---------------------------------------------------------------- bad input
def test_errors_name_the_problem(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(AdvlensError, match="no images found in"):
        load_images(empty)
    with pytest.raises(AdvlensError, match="no such file or folder"):
        load_images(tmp_path / "missing")
    with pytest.raises(AdvlensError, match="no such file or folder"):
        load_images("nowhere/photo.jpg")
    with pytest.raises(AdvlensError, match="did you mean 'digits'"):
        load_images("digts")
    with pytest.raises(AdvlensError, match="not a recognised image format") as err:
        load_images(empty / "notes.txt")
    assert "notes.txt" in str(err.value)
    with pytest.raises(AdvlensError, match="empty"):
        load_images([])
    with pytest.raises(AdvlensError, match="expected image files"):
        load_images([empty])
    for bad, kwargs in [("size", {"size": 0}), ("size", {"size": "big"}), ("n", {"n": 0}),
                        ("split", {"split": "val"}), ("seed", {"seed": -1})]:
        with pytest.raises(AdvlensError, match=bad):
            load_images("shapes", **kwargs)
    with pytest.raises(AdvlensError, match="source must be"):
        load_images(42)  # type: ignore[arg-type]


def test_truncated_and_corrupt_files_are_reported(tmp_path: Path) -> None:
    good = _save(tmp_path / "ok.jpg", (np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8),
                 quality=95)
    data = good.read_bytes()
    cut = tmp_path / "folder" / "cut.jpg"
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdvlensError, match="truncated") as err:
        load_images(cut)
    assert "cut.jpg" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(AdvlensError, match="cut.jpg"):
        load_images(cut.parent)  # found by a folder scan as well
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(AdvlensError, match="fake.png"):
        load_images([good, fake])
