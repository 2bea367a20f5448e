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


def _public(name: str):
    """The functions and classes a module defines and lists in its ``__all__``."""
    import inspect

    module = importlib.import_module(name)
    for attr in getattr(module, "__all__", []):
        obj = getattr(module, attr, None)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == name:
            yield f"{name}.{attr}", obj


def test_public_functions_have_docstrings_with_tensor_shapes():
    """Every public function and class has a docstring; one that takes a tensor argument names its shape
    (``[N,C,H,W]``, ``[N]``, a ``Shape:`` section…), as DESIGN.md's API contract asks."""
    import inspect
    import re

    shape = re.compile(r"Shape:|\[(?=[^\]]*[A-Za-z])[\w ,×|*.]+\]")
    missing, shapeless = [], []
    for name in MODULES:
        for qual, obj in _public(name):
            doc = inspect.getdoc(obj) or ""
            if not doc.strip():
                missing.append(qual)
            elif inspect.isfunction(obj):
                annotations = [str(p.annotation).replace("torch.", "") for p in inspect.signature(obj).parameters.values()]
                if any(a in ("Tensor", "Tensor | None") for a in annotations) and not shape.search(doc):
                    shapeless.append(qual)
    assert not missing, f"no docstring: {missing}"
    assert not shapeless, f"tensor arguments without a shape in the docstring: {shapeless}"
