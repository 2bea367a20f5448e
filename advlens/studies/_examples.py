"""Example maps kept for a report's figures: structured keys ``(model or image, condition, layer or kind)``.

A chunk returns ``{key: tensor}`` and the runner stores it as safetensors, whose keys are strings; the
tuple is joined with ``|``, a ``|`` or ``\\`` inside a part escaped (image names come from users' file
names), so any name round-trips. Reports read the stored maps back as a tree with :func:`example_tree`
instead of splitting strings themselves.

Example:
    >>> key = example_key("cat|1", "adversarial", "layer3")
    >>> key, split_key(key)
    ('cat\\\\|1|adversarial|layer3', ('cat|1', 'adversarial', 'layer3'))
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["example_key", "split_key", "example_tree", "image_grids"]

_SEP, _ESC = "|", "\\"


def example_key(*parts: object) -> str:
    """The storage key of ``parts`` (``|``-joined, each part's ``\\`` and ``|`` escaped)."""
    return _SEP.join(str(p).replace(_ESC, _ESC * 2).replace(_SEP, _ESC + _SEP) for p in parts)


def split_key(key: str) -> tuple[str, ...]:
    """The parts of a key made by :func:`example_key`."""
    parts, cur, i = [], [], 0
    while i < len(key):
        c = key[i]
        if c == _ESC and i + 1 < len(key):
            cur.append(key[i + 1])
            i += 2
            continue
        if c == _SEP:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return tuple(parts)


def example_tree(examples: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Stored examples as nested dicts ``{part0: {part1: {…: tensor}}}``, every level in insertion order."""
    tree: dict[str, Any] = {}
    for key, value in examples.items():
        *path, leaf = split_key(key)
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def image_grids(figs: Path, examples: Mapping[str, torch.Tensor], picks: Sequence[str], *,
                conditions: Sequence[str] | None = None, stem: Callable[[int, str], str] = lambda j, name: f"grid_{j}",
                title: Callable[[str], str] = str) -> list[Path]:
    """One map grid per example image (keys ``(image, condition, layer | "image")``): its conditions as rows
    (``conditions`` order, else as stored), the layers ``picks`` as columns; ``figs/<stem(j, name)>.png``."""
    from ..report import map_grid

    paths = []
    for j, (name, by_cond) in enumerate(example_tree(examples).items()):
        conds = [c for c in (conditions or by_cond) if "image" in by_cond.get(c, {})]
        rows = {c: by_cond[c]["image"][None].float() for c in conds}
        maps = {c: {layer: by_cond[c][layer][None].float() for layer in picks} for c in conds}
        paths.append(map_grid(figs / f"{stem(j, name)}.png", rows, maps, list(picks), title=title(name)))
    return paths
