"""Speed features: automatic batch sizing (with out-of-memory back-off) and ``torch.compile``.

The compile tests use the ``aot_eager`` backend (the same graph capture and autograd, no C++ compiler
needed); inductor is what users run on a GPU (``benchmarks/all_layer_cam.py --compile``).
"""
from __future__ import annotations

import importlib
import json
import pickle

import pytest
import torch

import advlens as al
from advlens._checks import AdvlensError
from advlens.cli import main
from advlens.defend import wrap as defend_wrap
from advlens.explain.engine import capture
from advlens import _checks
from advlens.explain import batching
from advlens.explain.batching import auto_batch_size, image_cost, run_batched
from advlens.studies.runner import run_study
from advlens.studies.spec import load_spec


@pytest.fixture
def model(digits_model):
    yield digits_model
    digits_model.set_compile(None)


def test_image_cost_grows_with_the_image_and_batch_size_follows_free_memory(vgg16, monkeypatch):
    fixed, small = image_cost(vgg16, (32, 32))
    _, large = image_cost(vgg16, (64, 64))
    assert fixed == 0 and 3.5 < large / small < 4.5  # activations scale with the pixels
    monkeypatch.setattr(_checks, "free_memory", lambda device: int(small * 10 / 0.5))
    assert auto_batch_size(vgg16, (32, 32), fraction=0.5) == 8  # 10 fit, rounded down to a power of two
    monkeypatch.setattr(_checks, "free_memory", lambda device: small // 2)
    assert auto_batch_size(vgg16, (32, 32)) == 1  # never below one image
    monkeypatch.setattr(_checks, "free_memory", lambda device: small * 10**6)
    assert auto_batch_size(vgg16, (32, 32), max_batch=100) == 64
    with pytest.raises(AdvlensError, match="fraction must be in"):
        auto_batch_size(vgg16, fraction=0)


def test_run_batched_halves_the_batch_on_out_of_memory():
    sizes = []

    def fn(sl: slice) -> list[int]:
        sizes.append(sl.stop - sl.start)
        if sl.stop - sl.start > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return list(range(sl.start, sl.stop))

    parts = run_batched(fn, 10, 8)
    assert sum(parts, []) == list(range(10))  # every item once, in order
    assert sizes[:2] == [8, 4] and max(sizes[2:]) == 2
    with pytest.raises(AdvlensError, match="out of memory at batch size 8"):  # a fixed batch size: a clear error
        run_batched(fn, 10, 8, backoff=False)
    with pytest.raises(AdvlensError, match="out of memory at batch size 1"):
        run_batched(lambda sl: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")), 4, 2)


def test_explain_with_auto_batch_size_equals_one_batch(model, digits_test, monkeypatch):
    x = digits_test.x[:5]
    ref = al.explain(model, x, "gradcam")
    _, per = image_cost(model)
    monkeypatch.setattr(_checks, "free_memory", lambda device: int(per * 2.5 / 0.6))  # -> batches of 2
    chosen = []
    real = batching.run_batched
    monkeypatch.setattr(importlib.import_module("advlens.explain.api"), "run_batched", lambda fn, n, bs, **kw: chosen.append(bs) or real(fn, n, bs, **kw))
    maps = al.explain(model, x, "gradcam", batch_size="auto")
    assert chosen == [2]
    for layer in ref:
        torch.testing.assert_close(maps[layer], ref[layer], atol=1e-5, rtol=0)
    with pytest.raises(AdvlensError, match="batch_size must be a positive integer, 'auto' or None"):
        al.explain(model, x, "gradcam", batch_size=0)


def test_study_auto_batch_size_is_fixed_at_the_first_run(tmp_path, digits_model, monkeypatch):
    spec = load_spec(preset="seed003", limit=6, strengths=[0.1], batch_size="auto",
                     models=[{"model": "small_vgg_digits", "data": "digits", "split": "test"}])
    monkeypatch.setattr(batching, "auto_batch_size", lambda model, **kw: 4)
    run_study(spec, tmp_path / "s", progress=False)
    assert json.loads((tmp_path / "s" / "spec.json").read_text())["batch_size"] == 4
    chunks = sorted(p.name for p in (tmp_path / "s" / "chunks" / "results").glob("*.parquet"))
    assert len(chunks) == 2  # 6 images in chunks of 4
    monkeypatch.setattr(batching, "auto_batch_size", lambda model, **kw: 1)  # more memory free now: ignored
    run_study(spec, tmp_path / "s", progress=False)
    assert sorted(p.name for p in (tmp_path / "s" / "chunks" / "results").glob("*.parquet")) == chunks
    with pytest.raises(AdvlensError, match="key 'batch_size': .*'auto', got 'big'"):
        load_spec(preset="seed003", batch_size="big")


def test_cli_batch_size_auto_and_bad_values(tmp_path, digits_model, capsys):
    main(["explain", "--model", "small_vgg_digits", "--images", "digits", "--limit", "3", "--batch-size", "auto",
          "--method", "gradcam", "--out", str(tmp_path / "e"), "--quiet"])
    assert (tmp_path / "e" / "maps.safetensors").is_file()
    assert main(["explain", "--batch-size", "0", "--out", str(tmp_path / "x")]) == 2
    assert "must be a positive integer or 'auto'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_attack_in_chunks_concatenates_per_image_results(model, digits_test):
    x, y = digits_test.x[:10], digits_test.y[:10]
    whole = al.attack(model, x, y, "pgd", eps=0.05, alpha=0.0125, steps=5, random_start=False)
    parts = al.attack(model, x, y, "pgd", eps=0.05, alpha=0.0125, steps=5, random_start=False, chunk_size=4)
    assert torch.equal(parts.x_adv, whole.x_adv) and torch.equal(parts.success, whole.success)
    assert torch.equal(parts.y, y) and parts.pred.shape == (10,) and parts.time_s > 0
    fuzz = al.attack(model, x, y, "dlfuzz", iterations=2, chunk_size=4)  # chunks of 4, 4, 2
    assert fuzz.extras["perturbation"].shape == x.shape and fuzz.extras["iterations_used"].shape == (10,)
    assert fuzz.extras["coverage_after"].shape == (3,) and fuzz.extras["coverage_curve"].shape == (3, 3)
    targeted = al.attack(model, x, y, "pgd", eps=0.1, steps=5, target=3, chunk_size="auto")
    assert (targeted.x_adv - x).abs().max() <= 0.1 + 1e-6 and targeted.success.shape == (10,)
    with pytest.raises(AdvlensError, match="chunk_size must be an int >= 1, got -1"):
        al.attack(model, x, y, "fgsm", chunk_size=-1)


def test_compiled_model_gives_eager_logits_attacks_and_maps(model, digits_test):
    x, y = digits_test.x[:16], digits_test.y[:16]
    keys = set(model.state_dict())
    logits = model(x).detach()
    adv = al.attack(model, x, y, "pgd", eps=0.031, alpha=0.031 / 4, steps=5, random_start=False)
    cams = al.explain(model, x, "gradcam")
    lrp = al.explain(model, x[:4], "lrp")
    model.set_compile("default", backend="aot_eager")
    torch.testing.assert_close(model(x).detach(), logits, atol=1e-5, rtol=0)
    assert "_compiled" in model.__dict__ and set(model.state_dict()) == keys  # compiled net is not a submodule
    adv_c = al.attack(model, x, y, "pgd", eps=0.031, alpha=0.031 / 4, steps=5, random_start=False)
    assert torch.equal(adv_c.success, adv.success)
    torch.testing.assert_close(adv_c.x_adv, adv.x_adv, atol=1e-6, rtol=0)
    for ref, got in ((cams, al.explain(model, x, "gradcam")), (lrp, al.explain(model, x[:4], "lrp"))):
        for layer in ref:  # hooked forwards run the eager network: layer maps are unchanged
            torch.testing.assert_close(got[layer], ref[layer], atol=1e-6, rtol=0)
    with capture(model, list(model.layers)):
        assert model._runner() is model.net
    assert model._runner() is not model.net
    copy = pickle.loads(pickle.dumps(model))  # a Ray worker's copy compiles its own
    assert "_compiled" not in copy.__dict__ and copy.compile_options == model.compile_options
    assert defend_wrap(model, "median").compile_options == model.compile_options
    model.set_compile(None)
    assert model._runner() is model.net
    with pytest.raises(AdvlensError, match="unknown compile mode 'fast'"):
        model.set_compile("fast")


def test_study_spec_compile_is_checked_and_not_part_of_the_identity():
    a = load_spec(preset="seed003", compile="default")
    assert a.identity() == load_spec(preset="seed003").identity()
    with pytest.raises(AdvlensError, match="key 'compile': must be 'off', 'default'.*got 'fast'"):
        load_spec(preset="seed003", compile="fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_image_cost_is_measured_and_fits(vgg16):
    m = al.load_model("vgg16", weights="random", device="cuda")
    fixed, per = image_cost(m)
    assert per > 0
    bs = auto_batch_size(m, max_batch=4096)
    maps = al.explain(m, torch.rand(bs, 3, 224, 224, device="cuda"), "gradcam", batch_size="auto")
    assert len(next(iter(maps.values()))) == bs
