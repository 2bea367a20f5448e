"""Robust training (seeds 001 and 004): retraining, PGD / interpretation-robust training, checkpoints."""
from __future__ import annotations

import pytest
import torch

import advlens as al
from advlens._checks import AdvlensError
from advlens.defend.recipes import adversarial_train, interpretation_difference, retrain, save_model
from advlens.explain.engine import capture
from advlens.metrics import kendall_tau


def _acc(model, x, y) -> float:
    return float((model.predict(x) == y).float().mean())


def test_fgsm_retraining_makes_an_fgsm_immune_model(digits_model, digits_test, tmp_path):
    """Seed 001 Table 1 on digits with the single-step option (``fgsm_form="single"``, eps 0.1): the clean
    model falls to ~0.10 on the FGSM test set; after 3 epochs of retraining on train + successful FGSM images
    the same set is ~0.99 (measured). The default, iterative form: test_fidelity_seed004.py."""
    x, y = digits_test.x, digits_test.y
    immune, info = retrain(digits_model, "digits", "fgsm", epochs=3, fgsm_form="single")  # the eps-0.1 option
    assert info["n_adversarial"] > 0.8 * info["n_train"]  # FGSM eps 0.1 flips ~90 % of the training images
    x_fgsm = al.attack(digits_model, x, y, "fgsm", eps=0.1).x_adv  # the fixed "clear+fgsm_test" set
    before, after = _acc(digits_model, x_fgsm, y), _acc(immune, x_fgsm, y)
    assert after >= before + 0.6, (before, after)
    assert _acc(immune, x, y) >= 0.97  # clean accuracy kept
    # white-box FGSM against the immune model itself: still strong, but weaker than on the clean model
    # (measured 0.15-0.34 vs 0.07-0.10, depending on the thread count the models were trained with)
    assert _acc(immune, al.attack(immune, x, y, "fgsm", eps=0.1).x_adv, y) > before
    assert not any(p.requires_grad for p in immune.parameters())
    assert all(torch.equal(a, b) for a, b in zip(digits_model.state_dict().values(), al.load_model(
        "small_vgg_digits").state_dict().values()))  # the original model is untouched
    path = save_model(immune, tmp_path / "immune.safetensors", info)
    again = al.load_model("small_vgg_digits", weights=str(path))
    assert torch.equal(again(x[:8]), immune(x[:8]))


def test_training_resumes_from_its_checkpoint_to_the_same_weights(digits_model, tmp_path):
    kw = dict(n_attack=64, epochs=2, seed=3)
    full, _ = retrain(digits_model, "digits", "fgsm", **kw)
    ckpt = tmp_path / "run.safetensors"
    _, first = retrain(digits_model, "digits", "fgsm", checkpoint=ckpt, stop_after=1, **kw)
    assert first["epochs"] == 1 and ckpt.is_file()
    resumed, second = retrain(digits_model, "digits", "fgsm", checkpoint=ckpt, **kw)
    assert second["resumed_from"] == 1 and second["epochs"] == 2
    assert second["n_adversarial"] == first["n_adversarial"]  # read back from the checkpoint, not re-attacked
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(AdvlensError, match="another training run"):
        retrain(digits_model, "digits", "fgsm", checkpoint=ckpt, n_attack=64, epochs=2, seed=4)
    _, longer = retrain(digits_model, "digits", "fgsm", checkpoint=ckpt, n_attack=64, epochs=3, seed=3)
    assert longer["resumed_from"] == 2 and longer["epochs"] == 3  # more epochs continue the same run
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(AdvlensError, match="cannot read training checkpoint"):
        retrain(digits_model, "digits", "fgsm", checkpoint=bad, **kw)


def test_interpretation_difference_is_zero_for_equal_inputs_and_differentiable(digits_model, digits_test):
    x, y = digits_test.x[:8], digits_test.y[:8]
    m = digits_model
    x_adv = al.attack(m, x, y, "pgd", eps=0.1, alpha=0.02, steps=5).x_adv
    with capture(m, [m.cam_layer]) as acts:
        logits = m(torch.cat([x, x_adv]).requires_grad_(True))
        f = acts[m.cam_layer]
    d_same = interpretation_difference(m, f[:8], f[:8], y, logits[8:])
    d = interpretation_difference(m, f[:8], f[8:], y, logits[8:])
    assert d_same.abs().max() == 0 and (d > 0.1).all() and (d <= 2).all()  # L1 of unit-mass maps: ≤ 2
    (g,) = torch.autograd.grad(d.sum(), f)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_pgd_and_interpretation_robust_training_keep_accuracy_and_maps(digits_model, digits_test):
    """Seed 004 Table VI in small: after adversarial training, PGD (eps 0.03) no longer fools the model and
    its CAM maps keep their pixel ranking (Kendall tau); gamma > 0 lowers the interpretation difference.
    Measured (2 epochs): NT acc 0.01 tau 0.18 D 1.17; AT acc 0.83 tau 0.93 D 0.15; robust acc 0.75 tau 0.95 D 0.09."""
    x, y = digits_test.x[:128], digits_test.y[:128]

    def evaluate(m):
        x_adv = al.attack(m, x, y, "pgd", eps=0.03, alpha=0.006, steps=10).x_adv
        a, b = (next(iter(al.explain(m, v, "cam", target=y).values())) for v in (x, x_adv))
        with torch.no_grad(), capture(m, [m.cam_layer]) as acts:
            logits = m(torch.cat([x, x_adv]))
            f = acts[m.cam_layer]
        d = interpretation_difference(m, f[:len(x)], f[len(x):], y, logits[len(x):]).mean()
        return _acc(m, x_adv, y), float(kendall_tau(a, b).mean()), float(d)

    nt = evaluate(digits_model)
    at = evaluate(adversarial_train(digits_model, "digits", eps=0.1, steps=3, epochs=1)[0])
    rb = evaluate(adversarial_train(digits_model, "digits", eps=0.1, steps=3, epochs=1, gamma=2.0,
                                    objective="pgd_ce")[0])  # the paper's objective: test_fidelity_seed004.py
    assert at[0] >= nt[0] + 0.4 and rb[0] >= nt[0] + 0.4, (nt, at, rb)
    assert at[1] >= nt[1] + 0.4 and rb[1] >= nt[1] + 0.4, (nt, at, rb)
    assert rb[2] < at[2] < nt[2], (nt, at, rb)
    with pytest.raises(AdvlensError, match="gamma"):
        adversarial_train(digits_model, "digits", gamma=-1.0)


def _tiny_problem():
    """A small conv net, its images and labels, all from seed 0 (for the shared-loop tests)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    gen = torch.Generator().manual_seed(1)
    return net, torch.rand(37, 3, 8, 8, generator=gen), torch.randint(0, 3, (37,), generator=gen)


def test_the_shared_training_loop_equals_the_hand_written_loops_it_replaced():
    """``train_epochs`` reproduces, bit for bit, the loop the small classifiers used before it (Adam,
    one-cycle schedule stepped per batch, seeded batch order, flips drawn from the same generator), so the
    cached models trained before it stay valid; a frozen module inside the loss collects no ``.grad``."""
    from advlens.models.fitting import train_epochs

    def flip(x, gen):
        return torch.where((torch.rand(len(x), generator=gen) < 0.5)[:, None, None, None], x.flip(-1), x)

    def trained(shared: bool) -> tuple[dict, torch.nn.Module]:
        net, x, y = _tiny_problem()
        frozen = torch.nn.Linear(3, 3)  # a classifier the loss reads but does not train
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=3 * -(-len(x) // 8))
        gen = torch.Generator().manual_seed(5)

        def loss(idx):
            return torch.nn.functional.cross_entropy(frozen(net(flip(x[idx], gen))), y[idx])

        if shared:
            losses = train_epochs(list(net.parameters()), opt, lambda idx, e, b: loss(idx), len(x), 8, 3, gen,
                                  scheduler=sched)
            assert len(losses) == 3 and all(v > 0 for v in losses)
        else:  # the loop small_vgg.train_small had before the shared one
            for p in frozen.parameters():
                p.requires_grad_(False)
            for _ in range(3):
                for idx in torch.randperm(len(x), generator=gen).split(8):
                    value = loss(idx)
                    opt.zero_grad(set_to_none=True)
                    value.backward()
                    opt.step()
                    sched.step()
        return net.state_dict(), frozen

    (mine, frozen), (ref, _) = trained(True), trained(False)
    assert all(torch.equal(mine[k], ref[k]) for k in ref)
    assert all(p.grad is None for p in frozen.parameters())


def test_the_shared_training_loop_stops_resumes_and_reports_every_epoch():
    """``stop_after`` then ``start_epoch`` with the generator's and optimizer's state gives the uninterrupted
    weights; ``on_epoch`` sees each completed epoch with its mean loss per example."""
    from advlens.models.fitting import train_epochs

    def run(stops: list[int | None]) -> tuple[dict, list]:
        net, x, y = _tiny_problem()
        opt, gen, seen, start = torch.optim.SGD(net.parameters(), lr=0.05), torch.Generator().manual_seed(2), [], 0
        for stop in stops:
            losses = train_epochs(list(net.parameters()), opt,
                                  lambda idx, e, b: torch.nn.functional.cross_entropy(net(x[idx]), y[idx]),
                                  len(x), 10, 4, gen, start_epoch=start, stop_after=stop,
                                  on_epoch=lambda e, v: seen.append((e, v)))
            start += len(losses)
        return net.state_dict(), seen

    (once, seen1), (twice, seen2) = run([None]), run([1, None])
    assert all(torch.equal(once[k], twice[k]) for k in once)
    assert [e for e, _ in seen1] == [e for e, _ in seen2] == [0, 1, 2, 3]
    assert [v for _, v in seen1] == [v for _, v in seen2]
