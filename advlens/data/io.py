"""Image I/O and geometry: read files with PIL, convert arrays to RGB tensors, crop and resize.

numpy appears only at the I/O boundary; everything after :func:`array_to_tensor` is torch.
"""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from advlens._checks import AdvlensError, file_kind, first_line

__all__ = [
    "IMAGE_SUFFIXES", "parse_size", "array_to_tensor", "read_image_file", "crop_box", "crop_resize",
    "grey_to_batch", "is_image_path", "images_under", "describe_suffixes", "MAX_SIDE", "INTERPOLATIONS",
]

#: File name endings read as images when scanning folders (other files are skipped).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
#: Resize filters accepted by :func:`crop_resize` (both antialiased, as ``F.interpolate`` names them).
INTERPOLATIONS = ("bilinear", "bicubic")
#: Largest output side accepted by :func:`parse_size` (one 8192×8192 image is 768 MiB as float32).
MAX_SIDE = 8192


def parse_size(size: int | Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    """Turn ``size`` (``None``, an int for a square, or ``(H, W)``) into ``(H, W)``.

    Raises:
        AdvlensError: not an int or a pair of ints in ``[1, MAX_SIDE]``.
    """
    if size is None:
        return default
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        pair: tuple[object, ...] = (int(size), int(size))
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        pair = tuple(size)
    else:
        raise AdvlensError(f"size must be an int or a pair (H, W) of ints, got {size!r}")
    if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in pair):
        raise AdvlensError(f"size must hold positive ints, got {size!r}")
    if max(pair) > MAX_SIDE:  # type: ignore[type-var]
        raise AdvlensError(f"size must be at most {MAX_SIDE} pixels per side, got {size!r}")
    return int(pair[0]), int(pair[1])  # type: ignore[call-overload]


def _composite_on_white(rgba: Tensor) -> Tensor:
    """``[4, H, W]`` float in [0,1] -> ``[3, H, W]`` composited over a white background."""
    alpha = rgba[3:4]
    return rgba[:3] * alpha + (1.0 - alpha)


def array_to_tensor(arr: np.ndarray) -> Tensor:
    """Convert one image array to an RGB float tensor.

    Accepts ``[H, W]`` (grey), ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` (alpha composited over white),
    of dtype uint8 (/255), uint16 (/65535), bool, or float (assumed in [0, 1], clipped).

    Returns:
        float32 tensor ``[3, H, W]`` in [0, 1].
    """
    a = np.asarray(arr)
    if a.dtype == np.uint8:
        t = torch.from_numpy(a.astype(np.float32)).div_(255.0)
    elif a.dtype == np.uint16:
        t = torch.from_numpy(a.astype(np.float32)).div_(65535.0)
    elif a.dtype == np.bool_ or np.issubdtype(a.dtype, np.floating):
        if a.dtype != np.bool_ and not np.isfinite(a).all():
            raise AdvlensError("image array contains NaN or infinite values")
        t = torch.from_numpy(a.astype(np.float32)).clamp_(0.0, 1.0)
    else:
        raise AdvlensError(f"unsupported image dtype {a.dtype}; expected uint8, uint16, bool or float")
    if t.ndim == 2:
        t = t[None]
    elif t.ndim == 3 and t.shape[2] in (1, 3, 4):
        t = t.permute(2, 0, 1)
    else:
        raise AdvlensError(f"unsupported image array shape {list(a.shape)}; expected [H,W] or [H,W,1|3|4]")
    if t.shape[0] == 4:
        t = _composite_on_white(t)
    elif t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t.contiguous()


def _pil_to_array(im: object) -> np.ndarray:
    """Convert a loaded PIL image to uint8/float numpy ``[H, W, C]`` keeping transparency as an alpha channel."""
    mode = im.mode  # type: ignore[attr-defined]
    if mode in ("I", "F") or mode.startswith("I;16"):
        a = np.asarray(im, dtype=np.float32)
        top = 65535.0 if (mode.startswith("I;16") or a.max(initial=0) > 255) else 255.0
        return np.clip(a / (1.0 if mode == "F" and a.max(initial=0) <= 1.0 else top), 0.0, 1.0)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info)  # type: ignore[attr-defined]
    return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))  # type: ignore[attr-defined]


def read_image_file(path: str | Path) -> Tensor:
    """Read one image file fully (so truncated files are caught), applying its EXIF orientation.

    The file must be a regular file (checked with ``stat`` before opening: a FIFO, a device or a socket is
    refused, never read). Warnings Pillow raises while decoding (a possible decompression bomb, corrupt EXIF…)
    are re-issued with the file's name. Pillow stops with an error on a truncated file or on scan data it
    cannot decode, but it silences libjpeg's own warnings; a JPEG whose damaged scan data libjpeg steps over
    is therefore decoded once more by torchvision's libjpeg, and what it reports ("Corrupt JPEG data: …")
    is re-issued as a warning naming the file (:func:`jpeg_decoder_messages`).

    Returns:
        float32 tensor ``[3, H, W]`` in [0, 1] (grey and palette images become RGB; alpha goes over white).

    Raises:
        AdvlensError: the file is missing or not a regular file, not an image, corrupt/truncated, too large
            to decode safely, or holds NaN/inf pixels (float TIFF); the message names the file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    kind = file_kind(path)
    if kind == "missing":
        raise AdvlensError(f"no such image file: '{path}'")
    if kind != "a regular file":
        raise AdvlensError(f"image file '{path}' is {kind}, not a regular file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Image.open(path) as im:
                im.load()  # decodes every byte: raises on truncated or corrupt data
                if im.mode == "F" and not np.isfinite(np.asarray(im)).all():
                    raise AdvlensError(f"image file '{path}' holds NaN or infinite pixel values (float image)")
                arr = _pil_to_array(ImageOps.exif_transpose(im))
    except AdvlensError:
        raise
    except UnidentifiedImageError:
        raise AdvlensError(f"cannot read image file '{path}': not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise AdvlensError(f"cannot read image file '{path}': too large to decode safely ({first_line(exc)})") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError…
        raise AdvlensError(f"cannot read image file '{path}': corrupt or truncated ({first_line(exc)})") from None
    for w in caught:
        category = w.category if issubclass(w.category, Warning) else UserWarning
        warnings.warn(f"image file '{path}': {first_line(w.message)}", category, stacklevel=2)
    if path.suffix.lower() in (".jpg", ".jpeg", ".jpe", ".jfif"):
        for message in jpeg_decoder_messages(path):
            warnings.warn(f"image file '{path}': the JPEG decoder reports: {message}", UserWarning, stacklevel=2)
    return array_to_tensor(arr)


def jpeg_decoder_messages(path: Path) -> list[str]:
    """What libjpeg prints while decoding ``path`` (e.g. ``Corrupt JPEG data: premature end of data segment``).

    libjpeg writes its warnings straight to file descriptor 2; they are caught by pointing it at a temp
    file for the duration of one :func:`torchvision.io.decode_jpeg` (other text written there meanwhile is
    passed back to stderr). Returns an empty list for a clean file.
    """
    import tempfile

    import torchvision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29's deprecation notice of its image codecs
        try:
            data = torchvision.io.read_file(str(path))
        except (RuntimeError, AttributeError):  # unreadable now, or codecs gone from a later torchvision
            return []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(capture.fileno(), 2)
        try:
            torchvision.io.decode_jpeg(data)
        except RuntimeError:
            pass  # Pillow decoded it; its own error, if any, was reported above
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        lines = capture.read().decode(errors="replace").splitlines()
    ours = [line.strip() for line in lines if "JPEG" in line or "jpeg" in line]
    others = [line for line in lines if line.strip() and line.strip() not in ours]
    if others:
        print("\n".join(others), file=sys.stderr)
    return list(dict.fromkeys(ours))


def crop_box(height: int, width: int, size: tuple[int, int], scale: float = 1.0,
             fy: float = 0.5, fx: float = 0.5) -> tuple[int, int, int, int]:
    """The crop ``(top, left, h, w)`` with the aspect ratio of ``size``, as large as fits times ``scale``.

    ``scale=1, fy=fx=0.5`` is the center crop (a centered square for a square ``size``); ``fy``/``fx`` in
    [0, 1] place the box from top/left to bottom/right.
    """
    aspect = size[1] / size[0]
    box_h = min(float(height), width / aspect) * scale
    ch = max(1, min(height, int(round(box_h))))
    cw = max(1, min(width, int(round(box_h * aspect))))
    top = int(round(fy * (height - ch)))
    left = int(round(fx * (width - cw)))
    return top, left, ch, cw


def crop_resize(img: Tensor, size: tuple[int, int], box: tuple[int, int, int, int] | None = None,
                flip: bool = False, mode: str = "bilinear") -> Tensor:
    """Crop ``img`` to ``box`` (default: the center crop of :func:`crop_box`) and resize it to ``size``.

    Resizing is antialiased (so shrinking a large photo does not alias); bicubic overshoot is clamped away.

    Args:
        img: ``[C, H, W]`` or ``[N, C, H, W]`` float tensor.
        size: output ``(H, W)``.
        box: ``(top, left, h, w)`` crop in input pixels.
        flip: mirror horizontally after resizing.
        mode: one of :data:`INTERPOLATIONS` (``"bilinear"`` or ``"bicubic"``).

    Returns:
        ``[C, *size]`` or ``[N, C, *size]`` float tensor, clamped to [0, 1].
    """
    single = img.ndim == 3
    batch = img[None] if single else img
    top, left, ch, cw = box if box is not None else crop_box(batch.shape[-2], batch.shape[-1], size)
    batch = batch[..., top:top + ch, left:left + cw].float()
    if tuple(batch.shape[-2:]) != tuple(size):
        if mode not in INTERPOLATIONS:
            raise AdvlensError(f"interpolation must be one of {', '.join(map(repr, INTERPOLATIONS))}, got {mode!r}")
        batch = F.interpolate(batch, size=size, mode=mode, align_corners=False, antialias=True)
    if flip:
        batch = batch.flip(-1)
    batch = batch.clamp(0.0, 1.0)
    return batch[0] if single else batch


def grey_to_batch(grey: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a stack of grey images ``[N, h, w]`` in [0, 1] to RGB ``[N, 3, *size]`` (bilinear, no crop)."""
    g = grey[:, None].float()
    if tuple(g.shape[-2:]) != tuple(size):
        g = F.interpolate(g, size=size, mode="bilinear", align_corners=False, antialias=True)
    return g.clamp_(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()


def is_image_path(path: Path) -> bool:
    """True for a visible regular file whose suffix is in :data:`IMAGE_SUFFIXES`."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def images_under(folder: Path, recursive: bool) -> list[Path]:
    """Sorted image files in ``folder`` (and its subfolders when ``recursive``), hidden ones skipped.

    Raises:
        AdvlensError: an entry with an image suffix is not a regular file (a FIFO, a device, a socket, a
            broken link): it is named rather than skipped or opened.
    """
    found = folder.rglob("*") if recursive else folder.iterdir()
    keep = []
    for p in found:
        if p.suffix.lower() not in IMAGE_SUFFIXES or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        kind = file_kind(p)
        if kind == "a regular file":
            keep.append(p)
        elif kind != "a folder":
            raise AdvlensError(f"'{p}' in folder '{folder}' is {kind}, not an image file; remove it or move it away")
    return sorted(keep)


def describe_suffixes() -> str:
    """A short list of the image suffixes looked for, for error messages."""
    return ", ".join(IMAGE_SUFFIXES[:5]) + ", …"



def save_images(x: Tensor, names: Sequence[str], folder: str | Path) -> list[Path]:
    """Save images ``x`` ``[N,3,H,W]`` in [0,1] as 8-bit PNG files ``folder/<name>.png`` (atomic).

    Note that 8-bit quantization moves pixels by up to 1/510, so a saved adversarial image can
    sit slightly outside an eps-ball smaller than that.
    """
    from PIL import Image

    from advlens._io import atomic_write

    if len(names) != len(x):
        raise AdvlensError(f"got {len(names)} names for {len(x)} images")
    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for a, name in zip(arr, names):
        safe = "".join(c if c.isalnum() or c in "-_#." else "_" for c in str(name))
        out.append(atomic_write(Path(folder) / f"{safe}.png", lambda f, a=a: Image.fromarray(a).save(f, format="PNG")))
    return out
