"""Seed 004 Sec. VII-B pinned: the 2- and 3-channel stacks of Table IV, the trained ``cnn`` backbone, and
training examples made by the interpretation-aware attack (AdvEdge toward random target classes)."""
from __future__ import annotations

import pytest
import torch

import advlens as al
from advlens.attacks import edge_map
from advlens.detect import EnsembleDetector, load
from advlens.detect.ensemble import random_targets

A = torch.tensor([[0.0, 0.5], [1.0, 0.25]])
B = torch.tensor([[1.0, 0.5], [0.5, 0.0]])


def test_table_iv_stacks_by_hand():
    """Table IV: "2-channel samples" = (a, b) (channels="two", the default), "3-channel samples" = (a, b, a·b)
    ("abc")."""
    assert EnsembleDetector().channels == "two"
    maps = {"grad": A[None], "cam": B[None], "mask": (1 - A)[None]}
    abc = EnsembleDetector(["grad", "cam"], channels="abc").stack(maps)
    assert abc.shape == (1, 3, 2, 2)
    assert torch.equal(abc[0, 2], torch.tensor([[0.0, 0.25], [0.5, 0.0]]))  # a·b computed by hand
    assert torch.equal(abc[0, 0], A) and torch.equal(abc[0, 1], B)
    two = EnsembleDetector(["grad", "cam"], channels="two").stack(maps)
    assert two.shape == (1, 2, 2, 2) and torch.equal(two[0, 0], A) and torch.equal(two[0, 1], B)
    assert EnsembleDetector(["cam"], channels="abc").stack(maps).shape == (1, 3, 2, 2)  # one map repeated
    assert EnsembleDetector(["cam"], channels="two").stack(maps).shape == (1, 1, 2, 2)
    three = EnsembleDetector(["grad", "cam", "mask"], channels="two").stack(maps)  # Table V: (a, b, c) either way
    assert torch.equal(three, EnsembleDetector(["grad", "cam", "mask"], channels="abc").stack(maps))
    assert torch.equal(three[0, 2], 1 - A)
    # pixel features of the 2-channel stack: each channel's 8×8 average pool, channel-major
    big = {"grad": torch.arange(256.0).view(1, 16, 16) / 255, "cam": torch.ones(1, 16, 16)}
    feats = EnsembleDetector(["grad", "cam"], channels="two").features(big)
    assert feats.shape == (1, 128) and torch.allclose(feats[0, 64:], torch.ones(64))
    assert feats[0, 0].item() == pytest.approx((0 + 1 + 16 + 17) / 4 / 255, abs=1e-7)  # top-left 2×2 block


def _squares(n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Maps ``[n,16,16]`` of two interpreters: noise in [0, 0.3]; the second half has a bright 4×4 square."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(n, 16, 16, generator=g) * 0.3, torch.rand(n, 16, 16, generator=g) * 0.3
    pos = torch.randint(0, 12, (n, 2), generator=g)
    for i in range(n // 2, n):
        r, c = pos[i].tolist()
        a[i, r : r + 4, c : c + 4] = 1.0
        b[i, r : r + 4, c : c + 4] = 0.9
    return {"grad": a, "cam": b}, torch.arange(n) >= n // 2


def _split(maps: dict[str, torch.Tensor], adv: torch.Tensor, flag: bool) -> dict[str, torch.Tensor]:
    return {k: v[adv == flag] for k, v in maps.items()}


def test_cnn_backbone_learns_deterministic_and_round_trips(digits_model, tmp_path):
    train, y_train = _squares(96, seed=0)
    test, y_test = _squares(64, seed=1)
    kw = dict(backbone="cnn", channels="two", cnn_epochs=8, n_estimators=20, seed=3)
    det = EnsembleDetector(**kw).fit_maps(digits_model, _split(train, y_train, False), _split(train, y_train, True))
    scores = det.score_maps(test)
    assert float(((scores > 0.5) == y_test).float().mean()) > 0.9
    assert det.features(test).shape == (64, 16 + 32 + 64)
    again = EnsembleDetector(**kw).fit_maps(digits_model, _split(train, y_train, False), _split(train, y_train, True))
    assert set(det.state) == set(again.state) and all(torch.equal(det.state[k], again.state[k]) for k in det.state)
    assert torch.equal(again.score_maps(test), scores)
    other = EnsembleDetector(**{**kw, "seed": 4}).fit_maps(digits_model, _split(train, y_train, False),
                                                           _split(train, y_train, True))
    assert not torch.equal(other.state["cnn.stages.0.weight"], det.state["cnn.stages.0.weight"])
    loaded = load(det.save(tmp_path / "cnn.safetensors"), digits_model)
    assert loaded.backbone == "cnn" and loaded.channels == "two"
    assert torch.equal(loaded.score_maps(test), scores)


def test_random_targets_per_image():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 3, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g)
    t = random_targets(x, y, 10, seed=0)
    assert t.dtype == torch.long and ((t >= 0) & (t < 10) & (t != y)).all()
    assert len(set(t.tolist())) > 3  # not one fixed shift
    assert torch.equal(random_targets(x[7:9], y[7:9], 10, seed=0), t[7:9])  # alone = in the batch
    assert not torch.equal(random_targets(x, y, 10, seed=1), t)
    with pytest.raises(al.AdvlensError, match="at least 2 classes"):
        random_targets(x, y, 1, seed=0)


def test_fit_without_x_adv_trains_on_advedge_examples(digits_model, monkeypatch):
    """Seed 004 Sec. VII-B: the training adversarials come from the interpretation-aware attack (AdvEdge,
    eq. 8 with N_w = E(x)) against one interpreter of the ensemble, toward random other classes."""
    x = al.load_images("digits", split="train").x[:12]
    det = EnsembleDetector(["cam", "grad"], n_estimators=10)
    calls = []
    real = det.training_attack
    monkeypatch.setattr(det, "training_attack", lambda xs: calls.append(real(xs)) or calls[-1])
    det.fit(digits_model, x)
    (res,) = calls
    assert res.params["method"] == "advedge" and res.params["interpreter"] == "cam"
    assert 2 <= int(res.success.sum()) and "init" in det.state
    delta = res.x_adv - x
    assert float(delta.abs().max()) <= 0.031 + 1e-6  # seed 004's ε ball
    assert bool((delta[edge_map(x).expand_as(x) == 0] == 0).all())  # AdvEdge moves only pixels with edges
    y = digits_model.predict(x)
    target = random_targets(x, y, 10, det.seed)
    assert bool((target != y).all()) and torch.equal(res.success, res.pred == target)
