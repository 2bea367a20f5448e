"""Built-in real-image sources that ship with installed packages (nothing is downloaded).

* ``samples``: the natural photos bundled with scikit-image, scikit-learn and matplotlib, with their
  ImageNet class where one clearly fits.
* ``digits``: scikit-learn's 1,797 real 8×8 handwritten digits (UCI optdigits test set).
* ``lfw``: scikit-image's 200 grey 25×25 patches from Labeled Faces in the Wild: 100 faces, 100 non-faces.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from advlens._checks import AdvlensError

from .batch import ImageBatch, subsample_indices
from .classes import imagenet_labels, imagenet_wnids
from .io import array_to_tensor, grey_to_batch, read_image_file
from .photos import PhotoItem, PhotoRead, build_photo_batch, select_split

__all__ = ["SAMPLE_PHOTOS", "imagenet_labels", "imagenet_wnids", "sample_items", "load_samples", "load_digits",
           "load_lfw"]

#: name -> (where it comes from, ImageNet class index or -1). Order = order in the batch.
SAMPLE_PHOTOS: dict[str, tuple[str, int]] = {
    "chelsea": ("skimage.data.chelsea", 285),            # Egyptian cat
    "coffee": ("skimage.data.coffee", 967),              # espresso
    "grace_hopper": ("matplotlib sample_data/grace_hopper.jpg", 652),  # military uniform
    "china": ("sklearn china.jpg", 698),                 # palace (Summer Palace, Beijing)
    "astronaut": ("skimage.data.astronaut", -1),         # portrait in a space suit: no ImageNet class
    "camera": ("skimage.data.camera", -1),               # grey: cameraman with a tripod
    "rocket": ("skimage.data.rocket", -1),               # Falcon 9 on its pad (not a space shuttle)
    "motorcycle": ("skimage.data.stereo_motorcycle", -1),  # left view; ImageNet has no 'motorcycle'
    "coins": ("skimage.data.coins", -1),                 # grey: Greek coins
    "flower": ("sklearn flower.jpg", -1),                # dahlia: no ImageNet class
    "hubble_deep_field": ("skimage.data.hubble_deep_field", -1),
}


@lru_cache(maxsize=None)
def _sample_photo(name: str) -> Tensor:
    """Full-resolution bundled photo as uint8 ``[3, H, W]`` (cached; callers must not modify it)."""
    if name == "grace_hopper":
        import matplotlib.cbook as cbook

        return _to_uint8(read_image_file(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return _to_uint8(array_to_tensor(load_sample_image(f"{name}.jpg")))
    import skimage.data

    if name == "motorcycle":
        arr = skimage.data.stereo_motorcycle()[0]
    else:
        arr = getattr(skimage.data, name)()
    return _to_uint8(array_to_tensor(arr))


def _to_uint8(img: Tensor) -> Tensor:
    return img.mul(255.0).round_().to(torch.uint8)


def _sample_reader(name: str):  # noqa: ANN202
    return lambda: _sample_photo(name).float().div_(255.0)


def sample_items() -> list[PhotoItem]:
    """The bundled photos as lazily read :class:`PhotoItem`s, labelled first."""
    return [PhotoItem(name, _sample_reader(name), y) for name, (_, y) in SAMPLE_PHOTOS.items()]


def load_samples(size: tuple[int, int], n: int | None, split: str | None, seed: int,
                 read: PhotoRead = PhotoRead()) -> ImageBatch:
    """Bundled photos, center-cropped and resized; ``n`` beyond the photo count adds seeded crop/flip views.

    ``labels`` is the ImageNet class list, ``y`` the ImageNet index (``-1`` where none fits); ``read`` sets
    the center-crop fraction and the resize filter.
    """
    return build_photo_batch(sample_items(), size, n=n, split=split, seed=seed, first=True,
                             labels=imagenet_labels(), has_y=True, what="samples", read=read)


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits as sk_load_digits

    data, target = sk_load_digits(return_X_y=True)
    grey = torch.from_numpy(np.asarray(data, dtype=np.float32).reshape(-1, 8, 8) / 16.0)
    return grey, torch.from_numpy(np.asarray(target, dtype=np.int64))


def _grey_dataset(grey: Tensor, y: Tensor, labels: list[str], prefix: str, size: tuple[int, int],
                  n: int | None, split: str | None, seed: int) -> ImageBatch:
    pool = select_split(y, y.numel(), split, prefix)
    what = prefix if split is None else f"the {split} split of {prefix}"
    idx = subsample_indices(pool, n, seed, what)
    names = [f"{prefix}_{i:04d}" for i in idx.tolist()]
    return ImageBatch(grey_to_batch(grey[idx], size), y[idx].clone(), names, None, labels)


def load_digits(size: tuple[int, int], n: int | None, split: str | None, seed: int) -> ImageBatch:
    """scikit-learn's 1,797 handwritten digits (values 0..16 → [0, 1]), grey → RGB, bilinear to ``size``.

    ``split`` picks the fixed stratified 80/20 split (seed 0); ``n`` then takes a seeded subset (``seed``).
    Names are ``digits_0042`` (index in the full set); labels ``"0"``..``"9"``.
    """
    grey, y = _digits_arrays()
    return _grey_dataset(grey, y, [str(d) for d in range(10)], "digits", size, n, split, seed)


@lru_cache(maxsize=1)
def _lfw_arrays() -> tuple[Tensor, Tensor]:
    import skimage.data

    arr = np.asarray(skimage.data.lfw_subset())
    if arr.shape != (200, 25, 25):
        raise AdvlensError(f"unexpected skimage lfw_subset shape {list(arr.shape)}; expected [200, 25, 25]")
    grey = _grey_from(arr)
    y = torch.cat([torch.ones(100, dtype=torch.int64), torch.zeros(100, dtype=torch.int64)])
    return grey, y


def _grey_from(arr: np.ndarray) -> Tensor:
    if arr.dtype == np.uint8:
        return torch.from_numpy(arr.astype(np.float32) / 255.0)
    return torch.from_numpy(np.clip(arr.astype(np.float32), 0.0, 1.0))


def load_lfw(size: tuple[int, int], n: int | None, split: str | None, seed: int) -> ImageBatch:
    """scikit-image's LFW subset: 100 faces (``y=1``) then 100 non-face background patches (``y=0``).

    Labels ``["non-face", "face"]``; names ``lfw_0000``..``lfw_0199``; same split/``n`` rules as digits.
    """
    grey, y = _lfw_arrays()
    return _grey_dataset(grey, y, ["non-face", "face"], "lfw", size, n, split, seed)
