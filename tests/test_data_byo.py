"""Tests for bringing your own data: class names of a model, ImageNet folders, crops, tables, streaming, bad files."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import advlens.data.photos as photos
from advlens._checks import AdvlensError
from advlens.data import ImageBatch, count_images, imagenet_labels, iter_images, load_images


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _solid(value: int, h: int = 8, w: int = 8) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def _smooth(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth photo-like uint8 image [h, w, 3]: bicubic upsampling of 5×4 random colours."""
    low = torch.rand(1, 3, 5, 4, generator=torch.Generator().manual_seed(seed))
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    return (img[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


@pytest.fixture()
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every image file read through the photo loaders."""
    seen: list[Path] = []
    real = photos.read_image_file

    def counting(path: Path) -> torch.Tensor:
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(photos, "read_image_file", counting)
    return seen


# ---------------------------------------------------------------- class names
def test_class_folders_follow_the_model_labels_by_name(tmp_path: Path) -> None:
    for folder, value in [("Dog", 10), ("tabby_cat", 20), ("zebra", 30)]:
        _save(tmp_path / folder / "a.png", _solid(value))
    model = ["zebra", "tabby cat", "dog", "other"]
    b = load_images(tmp_path, 4, labels=model)
    assert b.names == ["Dog/a", "tabby_cat/a", "zebra/a"]  # sorted folders, mapped by name
    assert b.y.tolist() == [2, 1, 0] and b.labels == model
    assert torch.allclose(b.x[:, 0, 0, 0], torch.tensor([10, 20, 30]) / 255, atol=1e-6)
    # an exact match wins over a case-insensitive one
    assert load_images(tmp_path, 4, labels=["dog", "zebra", "Dog", "tabby cat"]).y.tolist() == [2, 3, 1]
    # without labels: sorted folder order as before
    plain = load_images(tmp_path, 4)
    assert plain.y.tolist() == [0, 1, 2] and plain.labels == ["Dog", "tabby_cat", "zebra"]


def test_unmatched_folders_fall_back_to_sorted_order_with_a_warning(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    for folder in ["cat", "dog", "emu", "fox", "gnu"]:
        _save(tmp_path / folder / "x.png", _solid(0))
    with caplog.at_level(logging.WARNING, logger="advlens.data.photos"):
        b = load_images(tmp_path, 4, labels=["cat", "cow"])
    assert b.y.tolist() == [0, 1, 2, 3, 4] and b.labels == ["cat", "dog", "emu", "fox", "gnu"]
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "not all among the model's labels" in message and "4 missing" in message
    assert "'dog', 'emu', 'fox', …" in message and "sorted order" in message


def test_imagenet_wnid_folders_use_imagenet_indices(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("timm")
    synsets = Path(spec.submodule_search_locations[0]) / "data" / "_info" / "imagenet_synsets.txt"
    wnids = synsets.read_text().split()
    assert wnids[:2] == ["n01440764", "n01443537"]
    for wnid in ["n02123045", "n01443537", "n01440764"]:
        _save(tmp_path / wnid / "img.png", _solid(50))
    expected = [0, 1, wnids.index("n02123045")]
    assert expected[2] == 281
    b = load_images(tmp_path, 4)
    assert b.y.tolist() == expected and b.labels == imagenet_labels() and b.labels[281] == "tabby"
    # the model's ImageNet names do not contain wnids: still ImageNet indices
    assert load_images(tmp_path, 4, labels=imagenet_labels()).y.tolist() == expected
    _save(tmp_path / "n99999999" / "img.png", _solid(50))
    with pytest.raises(AdvlensError, match="'n99999999' in the class folders of") as err:
        load_images(tmp_path, 4)
    assert str(tmp_path) in str(err.value)


def test_builtin_sources_ignore_labels() -> None:
    b = load_images("digits", 8, n=5, labels=["a", "b"], crop_pct=0.5, interpolation="bicubic")
    ref = load_images("digits", 8, n=5)
    assert b.labels == ref.labels and torch.equal(b.x, ref.x) and torch.equal(b.y, ref.y)


# ---------------------------------------------------------------- crop and resize
def test_crop_pct_matches_torchvision_resize_then_center_crop(tmp_path: Path) -> None:
    arr = _smooth(320, 256, seed=0)
    path = _save(tmp_path / "photo.png", arr)
    img = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    for mode, tv_mode in [("bilinear", v2.InterpolationMode.BILINEAR), ("bicubic", v2.InterpolationMode.BICUBIC)]:
        def torchvision(size: int, pct: float) -> torch.Tensor:
            resize = v2.Resize(round(size / pct), interpolation=tv_mode, antialias=True)
            return v2.CenterCrop(size)(resize(img)).clamp(0, 1)

        # 56 / 0.875 = 64 = 256 / 4: both crop the same 224×224 box, so only border pixels may differ
        ours = load_images(path, 56, crop_pct=0.875, interpolation=mode).x[0]
        assert (ours - torchvision(56, 0.875)).abs().mean() < 1e-3
        # 64 / 0.875 = 73.1 is rounded to 73 by torchvision: a sub-pixel shift (measured mean diff 0.0117)
        ours = load_images(path, 64, crop_pct=0.875, interpolation=mode).x[0]
        assert (ours - torchvision(64, 0.875)).abs().mean() < 0.02
        # the full center crop is a different picture (measured 0.053)
        full = load_images(path, 56, interpolation=mode).x[0]
        assert (full - torchvision(56, 0.875)).abs().mean() > 0.04


def test_bicubic_differs_from_bilinear_and_stays_in_range(tmp_path: Path) -> None:
    step = np.zeros((12, 12, 3), dtype=np.uint8)
    step[:, 6:] = 255  # a sharp edge, upsampled: bicubic rings below 0 and above 1
    path = _save(tmp_path / "edge.png", step)
    lin = load_images(path, 40).x
    cub = load_images(path, 40, interpolation="bicubic").x
    ref = torch.nn.functional.interpolate(torch.from_numpy(step).permute(2, 0, 1)[None].float() / 255,
                                          size=(40, 40), mode="bicubic", antialias=True)
    assert torch.allclose(cub, ref.clamp(0, 1), atol=1e-6)
    assert float(ref.min()) < 0 or float(ref.max()) > 1  # bicubic overshoots: clamped
    assert float(cub.min()) >= 0 and float(cub.max()) <= 1 and (cub - lin).abs().max() > 0.01


@pytest.mark.parametrize(("kwargs", "name"), [({"crop_pct": 0}, "crop_pct"), ({"crop_pct": 1.5}, "crop_pct"),
                                              ({"crop_pct": "0.9"}, "crop_pct"),
                                              ({"interpolation": "nearest"}, "interpolation"),
                                              ({"skip_bad": "yes"}, "skip_bad"), ({"labels": "cat"}, "labels"),
                                              ({"labels": [1, 2]}, "labels")])
def test_bad_options_are_named(kwargs: dict, name: str) -> None:
    with pytest.raises(AdvlensError, match=name) as err:
        load_images("shapes", **kwargs)
    assert "\n" not in str(err.value)
    with pytest.raises(AdvlensError, match=name):
        iter_images("shapes", **kwargs)


# ---------------------------------------------------------------- tables
def _photo_dir(root: Path, values: list[int]) -> list[Path]:
    return [_save(root / "imgs" / f"p{i}.png", _solid(v)) for i, v in enumerate(values)]


def test_csv_with_int_labels_and_relative_paths(tmp_path: Path) -> None:
    _photo_dir(tmp_path, [0, 100, 200])
    table = tmp_path / "list.csv"
    table.write_text("path,label\nimgs/p2.png,5\nimgs/p0.png,0\nimgs/p1.png,\n")
    b = load_images(table, 4)
    assert b.names == ["imgs/p2", "imgs/p0", "imgs/p1"] and b.y.tolist() == [5, 0, -1] and b.labels is None
    assert torch.allclose(b.x[:, 1, 2, 2], torch.tensor([200, 0, 100]) / 255, atol=1e-6)
    model = [f"c{k}" for k in range(6)]
    assert load_images(table, 4, labels=model).labels == model
    with pytest.raises(AdvlensError, match=r"list.csv' row 1: column 'label' must hold an int in \[-1, 4\]"):
        load_images(table, 4, labels=model[:5])
    # run from another folder: paths stay relative to the table
    table.write_text("path\nimgs/p1.png\n")
    one = load_images(str(table), 4)
    assert one.y is None and one.names == ["imgs/p1"]


def test_csv_with_class_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _photo_dir(tmp_path, [0, 100, 200, 250])
    table = tmp_path / "t.csv"
    table.write_text("path,label\nimgs/p0.png,Dog\nimgs/p1.png,cat\nimgs/p2.png,dog\nimgs/p3.png,\n")
    b = load_images(table, 4, labels=["cat", "Dog", "dog"])
    assert b.y.tolist() == [1, 0, 2, -1] and b.labels == ["cat", "Dog", "dog"]
    b = load_images(table, 4, labels=["DOG", "CAT"])  # no exact match: case-insensitive
    assert b.y.tolist() == [0, 1, 0, -1] and b.labels == ["DOG", "CAT"]
    with caplog.at_level(logging.WARNING):
        plain = load_images(table, 4, labels=["cat"])
    assert plain.labels == ["Dog", "cat", "dog"] and plain.y.tolist() == [0, 1, 2, -1]
    assert "'Dog', 'dog'" in caplog.text and "label names of table" in caplog.text


def test_parquet_with_absolute_paths(tmp_path: Path) -> None:
    files = _photo_dir(tmp_path / "elsewhere", [10, 20])
    table = tmp_path / "tables" / "list.parquet"
    table.parent.mkdir()
    pd.DataFrame({"path": [str(files[1]), str(files[0])], "label": ["n01443537", "n01440764"]}).to_parquet(table)
    b = load_images(table, 4)
    assert b.names == ["p1", "p0"] and b.y.tolist() == [1, 0] and b.labels == imagenet_labels()
    assert count_images(table) == 2


def test_table_errors_name_the_table_and_row(tmp_path: Path) -> None:
    _photo_dir(tmp_path, [0])
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nimgs/p0.png,1\n")
    with pytest.raises(AdvlensError, match=r"table '.*bad.csv' has no 'path' column \(columns: 'file', 'label'\)"):
        load_images(bad)
    bad.write_text("path\nimgs/p0.png\nimgs/gone.png\n")
    with pytest.raises(AdvlensError, match=r"bad.csv' row 2: no such file 'imgs/gone.png'"):
        load_images(bad)
    bad.write_text("path,label\n")
    with pytest.raises(AdvlensError, match=r"bad.csv' is empty"):
        load_images(bad)
    bad.write_text("")
    with pytest.raises(AdvlensError, match=r"bad.csv' is empty"):
        load_images(bad)
    bad.write_text("path,label\nimgs/p0.png,1.5\n")
    with pytest.raises(AdvlensError, match=r"row 1: column 'label' must hold an int"):
        load_images(bad)


# ---------------------------------------------------------------- unreadable files
def test_unreadable_files_stop_or_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _save(tmp_path / "cat" / "c0.png", _solid(10))
    (tmp_path / "cat" / "c1.png").write_bytes(b"not a png at all")
    _save(tmp_path / "dog" / "d0.png", _solid(30))
    with pytest.raises(AdvlensError, match="c1.png") as err:
        load_images(tmp_path, 4)
    assert "(pass skip_bad=True / --skip-bad to skip unreadable files)" in str(err.value)
    assert "\n" not in str(err.value)
    with caplog.at_level(logging.WARNING):
        b = load_images(tmp_path, 4, skip_bad=True)
    assert b.names == ["cat/c0", "dog/d0"] and b.y.tolist() == [0, 1] and b.labels == ["cat", "dog"]
    assert torch.allclose(b.x[:, 0, 0, 0], torch.tensor([10, 30]) / 255, atol=1e-6)
    assert "c1.png" in caplog.text and "skipping" in caplog.text
    # extra views of a skipped photo go with it
    assert load_images(tmp_path, 4, n=6, skip_bad=True).names == ["cat/c0", "dog/d0", "cat/c0#1", "dog/d0#1"]
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(b"\xff\xd8garbage")
    (flat / "b.png").write_bytes(b"")
    with pytest.raises(AdvlensError, match="no readable images"):
        load_images(flat, 4, skip_bad=True)
    with pytest.raises(AdvlensError, match="no readable images"):
        list(iter_images(flat, 4, skip_bad=True))


# ---------------------------------------------------------------- streaming
def test_streaming_chunks_equal_load_images_and_read_lazily(tmp_path: Path, reads: list[Path]) -> None:
    for i in range(7):
        _save(tmp_path / ("a" if i < 4 else "b") / f"{i}.png", _smooth(20, 30, seed=i))
    (tmp_path / "b" / "9.png").write_bytes(b"junk")
    whole = load_images(tmp_path, 12, labels=["b", "a"], crop_pct=0.8, interpolation="bicubic", skip_bad=True)
    assert len(whole) == 7 and whole.y.tolist() == [1] * 4 + [0] * 3
    reads.clear()
    chunks = iter_images(tmp_path, 12, chunk_size=3, labels=["b", "a"], crop_pct=0.8, interpolation="bicubic",
                         skip_bad=True)
    assert reads == []  # listing reads no image
    first = next(chunks)
    assert len(first) == 3 and len(reads) == 3
    rest = list(chunks)
    assert [len(c) for c in rest] == [3, 1]  # 4, 5, 6 | 9 skipped
    joined = ImageBatch.cat([first, *rest])
    assert joined.names == whole.names and torch.equal(joined.x, whole.x) and torch.equal(joined.y, whole.y)
    assert joined.labels == whole.labels == ["b", "a"]
    # a seeded subset streams the same subset
    sub = ImageBatch.cat(list(iter_images(tmp_path / "a", 8, chunk_size=2, n=3, seed=4)))
    assert sub.names == load_images(tmp_path / "a", 8, n=3, seed=4).names and len(sub) == 3


def test_streaming_tables_and_builtin_sources(tmp_path: Path) -> None:
    _photo_dir(tmp_path, [0, 60, 120, 180, 240])
    table = tmp_path / "t.csv"
    table.write_text("path,label\n" + "".join(f"imgs/p{i}.png,{'xy'[i % 2]}\n" for i in range(5)))
    chunks = list(iter_images(table, 6, chunk_size=2))
    whole = load_images(table, 6)
    assert [len(c) for c in chunks] == [2, 2, 1] and all(c.labels == ["x", "y"] for c in chunks)
    joined = ImageBatch.cat(chunks)
    assert joined.names == whole.names and torch.equal(joined.x, whole.x) and joined.y.tolist() == [0, 1, 0, 1, 0]
    digits = list(iter_images("digits", 8, chunk_size=500))
    assert [len(c) for c in digits] == [500, 500, 500, 297]
    assert torch.equal(ImageBatch.cat(digits).x, load_images("digits", 8).x)


def test_count_images_reads_nothing(tmp_path: Path, reads: list[Path]) -> None:
    _photo_dir(tmp_path, [0, 1, 2])
    _save(tmp_path / "classes" / "k" / "a.png", _solid(1))
    (tmp_path / "t.csv").write_text("path\nimgs/p0.png\nimgs/p0.png\n")
    assert count_images(tmp_path / "imgs") == 3 and count_images(tmp_path / "classes") == 1
    assert count_images(tmp_path / "t.csv") == 2 and count_images([tmp_path / "imgs" / "p1.png"]) == 1
    assert count_images("digits") == 1797 and count_images("shapes") == 200 and count_images("lfw") == 200
    assert reads == []
    with pytest.raises(AdvlensError, match="no such file or folder"):
        count_images(tmp_path / "missing")
