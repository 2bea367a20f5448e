"""The examples in the docstrings run (doctest), so the documentation shows code that works."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import advlens

MODULES = sorted(m.name for m in pkgutil.walk_packages(advlens.__path__, "advlens.")
                 if not m.name.startswith("advlens.cli.__main__"))


def _has_examples(name: str) -> bool:
    finder = doctest.DocTestFinder(exclude_empty=True)
    return any(t.examples for t in finder.find(importlib.import_module(name)))


@pytest.mark.parametrize("name", [m for m in MODULES if _has_examples(m)])
def test_docstring_examples_run(name, tmp_path, monkeypatch, digits_model, digits_test):
    """Examples may use ``torch``, ``torchvision``, ``al`` (advlens), and ``model`` (the small VGG trained on
    digits), ``x`` (4 test digits ``[4,3,32,32]``) and ``y`` (their labels ``[4]``)."""
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(name)
    globs = {"torch": importlib.import_module("torch"), "al": advlens, "torchvision": importlib.import_module("torchvision"),
             "model": digits_model, "x": digits_test.x[:4], "y": digits_test.y[:4]}
    result = doctest.testmod(module, extraglobs=globs, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (see output)"
