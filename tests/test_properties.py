"""Property-based tests (hypothesis) on a fixed, derandomized budget (well under 60 s in all):
attacks stay in their ball and in [0,1] for arbitrary valid parameters and shapes, metrics stay in
their ranges, per-image results do not depend on the batch, and no argument list gives the CLI a traceback."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import advlens as al
from advlens import cli

FAST = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _tiny_model() -> al.ClassifierModel:
    """A 3-class CNN of any input size (adaptive pooling), random but seeded: fast enough for many examples."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    return al.wrap(net, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ["1", "3"], input_size=(16, 16))


MODEL = _tiny_model()


@st.composite
def images(draw, min_n: int = 1, max_n: int = 4, min_side: int = 8) -> torch.Tensor:
    n = draw(st.integers(min_n, max_n))
    h, w = draw(st.integers(min_side, 20)), draw(st.integers(min_side, 20))
    seed = draw(st.integers(0, 2**31 - 1))
    x = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))
    if draw(st.booleans()):  # saturated pixels: the [0,1] clip must hold at the edges too
        x = (x * 3 - 1).clamp(0, 1)
    return x


@FAST
@given(x=images(), eps=st.floats(1e-3, 0.5), steps=st.integers(1, 4), rel_alpha=st.floats(0.05, 2.0),
       random_start=st.booleans(), seed=st.integers(0, 1000))
def test_pgd_stays_in_its_ball_and_in_the_unit_cube(x, eps, steps, rel_alpha, random_start, seed):
    res = al.attack(MODEL, x, None, "pgd", eps=eps, alpha=min(1.0, rel_alpha * eps), steps=steps,
                    random_start=random_start, seed=seed)
    assert res.x_adv.shape == x.shape and res.success.shape == (len(x),)
    assert float((res.x_adv - x).abs().max()) <= eps + 1e-6
    assert 0.0 <= float(res.x_adv.min()) and float(res.x_adv.max()) <= 1.0


@FAST
@given(x=images(), eps=st.floats(1e-3, 1.0))
def test_fgsm_stays_in_its_ball_and_in_the_unit_cube(x, eps):
    res = al.attack(MODEL, x, None, "fgsm", eps=eps)
    assert float((res.x_adv - x).abs().max()) <= eps + 1e-6
    assert 0.0 <= float(res.x_adv.min()) and float(res.x_adv.max()) <= 1.0


@settings(FAST, max_examples=10)
@given(x=images(max_n=2), pixels=st.integers(1, 3), seed=st.integers(0, 1000))
def test_onepixel_changes_at_most_its_pixels(x, pixels, seed):
    res = al.attack(MODEL, x, None, "onepixel", pixels=pixels, popsize=8, iterations=2, seed=seed)
    changed = (res.x_adv != x).any(1).flatten(1).sum(1)
    assert int(changed.max()) <= pixels
    assert 0.0 <= float(res.x_adv.min()) and float(res.x_adv.max()) <= 1.0


@FAST
@given(a=images(min_side=11), data=st.data())  # SSIM's 11x11 window needs maps of at least 11x11
def test_map_and_image_metrics_stay_in_their_ranges(a, data):
    seed = data.draw(st.integers(0, 1000))
    b = torch.rand(a.shape, generator=torch.Generator().manual_seed(seed))
    ma, mb = a[:, 0], b[:, 0]  # non-negative maps [N,H,W]
    if data.draw(st.booleans()):
        mb = torch.zeros_like(mb)  # a blank map: metrics must stay finite and in range
    m = al.metrics
    for name, value, lo, hi in [("cosine", m.cosine(ma, mb), 0.0, 1.0), ("ssim", m.ssim(ma, mb), -1.0, 1.0),
                                ("nissim", m.nissim(ma, mb), 0.0, math.inf), ("l1", m.l1(ma, mb), 0.0, math.inf),
                                ("iou", m.iou(ma, mb), 0.0, 1.0), ("noise_rate", m.noise_rate(a, b), 0.0, 2.0)]:
        assert value.shape == (len(a),), name
        assert torch.isfinite(value).all() and (value >= lo - 1e-5).all() and (value <= hi + 1e-5).all(), (name, value)
    tau = m.kendall_tau(ma, mb)  # undefined (NaN, as scipy) exactly where a map is constant
    constant = (ma.flatten(1).std(1) == 0) | (mb.flatten(1).std(1) == 0)
    assert torch.equal(tau.isnan(), constant) and (tau[~constant].abs() <= 1 + 1e-5).all(), tau
    assert (m.psnr(a, b) > 0).all()


@FAST
@given(x=images(min_n=2, max_n=5), data=st.data())
def test_per_image_results_do_not_depend_on_the_batch(x, data):
    """matched noise and PGD with a random start: image i gets the same result in any subset and order."""
    order = data.draw(st.permutations(range(len(x))))
    keep = order[: data.draw(st.integers(1, len(x)))]
    seed, strength = data.draw(st.integers(0, 1000)), data.draw(st.floats(0.1, 4.0))
    x_adv = (x + 0.05 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)))).clamp(0, 1)
    full = al.matched_noise(x, x_adv, strength, seed=seed)
    part = al.matched_noise(x[keep], x_adv[keep], strength, seed=seed)
    assert torch.equal(full[keep], part)
    a = al.attack(MODEL, x, None, "pgd", eps=0.03, alpha=0.01, steps=2, random_start=True, seed=seed)
    b = al.attack(MODEL, x[keep], None, "pgd", eps=0.03, alpha=0.01, steps=2, random_start=True, seed=seed)
    torch.testing.assert_close(a.x_adv[keep], b.x_adv, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ the command line never gives a traceback
_FLAGS = ["--limit", "--eps", "--steps", "--alpha", "--seed", "--batch-size", "--chunk-size", "--method", "--layers",
          "--model", "--images", "--weights", "--param", "--target", "--out", "--preset", "--backend", "--precision",
          "--strengths", "--epochs", "--eot", "--defense", "--data", "--split", "--detector", "--compile", "--overwrite"]
_VALUES = ["0", "-1", "1", "2", "nan", "inf", "1e309", "x", "", "all", "auto", "digits", "nope", "eps=", "=1",
           "eps=true", "a=b=c", "loss_fn=x", "/dev/null", "/proc", "..", "small_vgg_digits", "gradcam", "pgd",
           "seed0", "seed000", "ray", "bf16", "test", "🙂", "--", "-"]


class _ReachedWork(BaseException):
    """Raised where a command would start loading models and computing: the arguments were accepted (a
    BaseException, so the CLI's catch-all for internal errors lets it through)."""


@settings(FAST, max_examples=150)
@given(command=st.sampled_from([["attack"], ["explain"], ["study"], ["demo"], ["train"], ["report"], ["models"],
                                ["detect", "fit"], ["detect", "score"], ["detect", "eval"], ["defend", "eval"],
                                ["defend", "train"], []]),
       rest=st.lists(st.one_of(st.sampled_from(_FLAGS), st.sampled_from(_VALUES), st.text(max_size=6)), max_size=8))
def test_arbitrary_argument_lists_never_give_a_traceback(command, rest, tmp_path_factory):
    """Exit 0 or 2 with one line on stderr; never an uncaught exception (exit 1 would be an internal error)."""
    import contextlib
    import io
    from unittest import mock

    def stop(*args, **kwargs):
        raise _ReachedWork

    err = io.StringIO()
    with contextlib.chdir(tmp_path_factory.mktemp("fuzz")), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()), \
            mock.patch("advlens.models.load_model", stop), mock.patch("advlens.studies.runner.run_study", stop), \
            mock.patch("advlens.detect.load", stop):
        try:
            code = cli.main([*command, *rest])
        except SystemExit as e:
            code = e.code
        except _ReachedWork:
            code = 0
    assert code in (0, 2), err.getvalue()
    if code == 2:
        assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
