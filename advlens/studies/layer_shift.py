"""Seed 000 (Renkhoff, Tan et al.): which layers' explanations does an adversarial perturbation
move more than Gaussian noise of the same statistics?

For every image S with perturbation N_a (found by the spec's attack, DLFuzz in the preset) and
each strength s: D_a = cos(G(S), G(S + s·N_a)) and D_g = cos(G(S), G(S + s·N_g)) per layer, with
N_g ~ N(mean(N_a), std(N_a)) (seed 000 eqs. 6–8 as written in seed 002). A layer is *compromised*
for an image when D_a is below the layer's median D_g over the data set (at the same strength);
the authors' code uses the mean (``noise_rule = "mean"``).

Cosine similarity (seed 000 eq. 5) is taken between the maps as the paper normalizes them,
H = ReLU(Σ_k α_k A^k) / max H (seed 000 § III-C; REFERENCE.md): a positive rescaling, so the cosine
is that of the raw (upsampled) maps (``map_normalization = "max"``); ``"minmax"`` min–max scales
each map first (the study's behaviour before issue 16), which shifts the vectors and changes the
value. The other metrics (NISSIM, SSIM, L1, IoU) always take min–max scaled maps in [0, 1]:
NISSIM/SSIM are seed 003's (eq. 1), whose SSIM constants assume that range.

Compromise probabilities (Fig. 6) and the histogram of compromised layers per image (Fig. 7)
count adversarial examples only (seed 000 § IV-E: "with all adversarial examples", "by single
adversarial example"; § IV-A drops seeds without one): ``count = "successful"`` keeps the images
whose attack succeeded (``attack_success``), for the noise thresholds too; ``"all"`` counts every
image (the study's behaviour before issue 16).

Neuron coverage (seed 000 § IV-B, Fig. 2; :mod:`advlens.metrics.coverage`): for the clean images and
for each condition × strength, the fraction of neurons covered (value > ``coverage_threshold``) by
the first n images — Fig. 2a compares the adversarial inputs with the matched noise, Fig. 2b the
strengths. Neurons are DLFuzz's (every conv, pooling and dense layer, ``coverage_layers = "dlfuzz"``)
or the explainable layers' channels only (``"explained"``); every image counts (coverage is a
property of the inputs DLFuzz ran, whether or not they flipped the label). Each chunk records per
neuron the first of its images covering it (``neuron_first_covered``); :func:`derived` joins the
chunks in order into the exact coverage of the first n images of the data set.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import pandas as pd
import torch
from pydantic import Field

from .. import metrics as M
from .._checks import AdvlensError
from ..attacks import attack, matched_noise
from ..data import ImageBatch
from ..explain.api import layers_for, normalize_maps
from ..metrics.coverage import coverage_layers, first_covered, neuron_values
from ..models import ClassifierModel
from ._common import chunks, load_entry, main_entry, maps_in_batches, similarity_rows
from ._examples import example_key
from .layer_shift_report import (attack_noise_table, compromise_probability, compromise_table,
                                  compromised_layers_histogram, counted_images, coverage_progression, derived, report)
from .runner import Unit
from .spec import Explainers, Layers, Metrics, Strengths, StudySpec, register_study

__all__ = ["LayerShiftSpec", "plan", "report", "derived", "compromise_table", "compromise_probability",
           "minmax_metrics", "counted_images", "compromised_layers_histogram", "attack_noise_table",
           "coverage_progression"]


class LayerShiftSpec(StudySpec):
    """Settings of the layer-shift study (seed 000): the attack's perturbation scaled by each strength
    against matched Gaussian noise, the explanations compared per layer.

    Attributes:
        strengths: perturbation scales (seed 000: 0.25 … 4).
        explainers, layers, metrics: what is computed and compared at every layer.
        noise_rule: the compromise threshold, ``median`` of the noise similarities (paper) or ``mean``
            (the authors' code).
        explain_target: class each map explains: ``predicted`` (the input's own prediction, seed 000)
            or ``clean`` (the clean image's prediction on every input).
        map_normalization: maps compared by cosine: ``max`` (H / max H, seed 000 § III-C: the cosine of
            the raw maps, paper) or ``minmax`` (min–max scaled maps, before issue 16); other metrics
            always take min–max scaled maps.
        count: images the compromise probabilities and histograms count: ``successful`` (adversarial
            examples only, seed 000 § IV-E, paper) or ``all`` (every image, before issue 16).
        coverage_layers: the neurons of the coverage curves (seed 000 Fig. 2) and of a DLFuzz attack
            without its own ``layers``: ``dlfuzz`` (every conv, pooling and dense layer, DLFuzz) or
            ``explained`` (the explainable layers only, before issue 16).
        coverage_threshold: a neuron is covered when its scaled value exceeds it (0.25, seed 000).
    """

    study: Literal["layer_shift"] = "layer_shift"
    strengths: Strengths
    explainers: Explainers
    layers: Layers
    metrics: Metrics
    noise_rule: Literal["median", "mean"] = "median"
    explain_target: Literal["predicted", "clean"] = "predicted"
    map_normalization: Literal["max", "minmax"] = "max"
    count: Literal["successful", "all"] = "successful"
    coverage_layers: Literal["dlfuzz", "explained"] = "dlfuzz"
    coverage_threshold: Annotated[float, Field(ge=0, lt=1)] = 0.25


def minmax_metrics(metrics, map_normalization: str = "max") -> list[str]:
    """The metrics of ``metrics`` computed on min–max scaled maps; the rest take the raw maps.

    ``"max"`` (seed 000 § III-C, eq. 5): cosine on the raw maps, equal to the cosine of H / max H;
    ``"minmax"``: every metric on min–max scaled maps.
    """
    if map_normalization not in ("max", "minmax"):
        raise AdvlensError(f"map_normalization must be 'max' or 'minmax', got {map_normalization!r}")
    return [m for m in metrics if map_normalization == "minmax" or m != "cosine"]


# Seed 000 (Renkhoff, Tan et al.): DLFuzz perturbation, strengths 25 %–400 %, matched Gaussian noise,
# Grad-CAM at every layer, cosine similarity, per-layer median-noise threshold.
register_study("layer_shift", LayerShiftSpec, presets={"seed000": {
    "model": "efficientnet_lite0", "data": "samples",
    "attack": {"method": "dlfuzz", "strategy": 1, "threshold": 0.25, "neurons": 10, "iterations": 1,
               "step": 0.5 / 255, "lam": 0.5},
    "strengths": [0.25, 0.5, 1.0, 2.0, 4.0], "explainers": ["gradcam"], "metrics": ["cosine"],
}})


def plan(spec: LayerShiftSpec) -> list[Unit]:
    """One unit per chunk of ``batch_size`` images."""
    model, batch = load_entry(main_entry(spec), spec)
    for m in spec.explainers:  # fail on unknown explainers/layers before anything is written
        layers_for(model, m, spec.layers)
    params = {k: v for k, v in spec.attack.items() if k != "method"}
    if spec.attack["method"] == "dlfuzz":
        params.setdefault("layers", spec.coverage_layers)

    def run(model: ClassifierModel, batch: ImageBatch, i: int, sl: slice) -> dict[str, Any]:
        x, names = batch.x[sl].to(model.device), batch.names[sl]
        neurons = coverage_layers(model, spec.coverage_layers)
        firsts = [_first_covered_rows(model, neurons, x, spec.coverage_threshold, i, "clean", 0.0)]
        seed = spec.seed  # every draw is per image (advlens._rng): chunks need no seeds of their own
        # raw maps: each metric scales them as minmax_metrics says (cosine of H / max H = of H, seed 000 eq. 5)
        minmax = minmax_metrics(spec.metrics, spec.map_normalization)
        clean, y = maps_in_batches(model, x, spec.explainers, spec.layers, spec.batch_size, normalize=False)
        res = attack(model, x, y, method=spec.attack["method"], seed=seed, **params)
        success = res.success.cpu().numpy()  # per image: the attack found an adversarial example
        target = y if spec.explain_target == "clean" else None
        rows, imgs, examples = [], [], {}
        for s in spec.strengths:
            conds = {"adversarial": (x + s * (res.x_adv - x)).clamp(0, 1),
                     "noise": matched_noise(x, res.x_adv, strength=s, seed=seed)}
            for cond, xc in conds.items():
                maps, pred = maps_in_batches(model, xc, spec.explainers, spec.layers, spec.batch_size, target,
                                             normalize=False)
                r = similarity_rows(clean, maps, names, spec.metrics, minmax, attack=spec.attack["method"],
                                    strength=s, condition=cond)
                rows.append(r.assign(attack_success=r.image.map(dict(zip(names, success))).astype(bool)))
                firsts.append(_first_covered_rows(model, neurons, xc, spec.coverage_threshold, i, cond, s))
                imgs.append(pd.DataFrame({
                    "image": names, "strength": s, "condition": cond, "attack_success": success,
                    "label": y.cpu().numpy(),
                    "pred": pred.cpu().numpy(), "flipped": (pred != y).cpu().numpy(),
                    "psnr": M.psnr(x, xc).cpu().numpy(), "linf": (xc - x).abs().amax((1, 2, 3)).cpu().numpy(),
                }))
                if i == 0 and s == 1.0:
                    examples.update(_examples(x, xc, clean, maps, names, cond, spec.examples))
        info = {"chunk": i, "images": len(x), "attack_success": res.success_rate, "time_s": res.time_s,
                "neurons": firsts[0].attrs["neurons"]}
        info.update({k: float(v) for k, v in res.extras.items() if k.startswith("coverage_") and v.ndim == 0})
        out = {"results": pd.concat(rows, ignore_index=True), "images": pd.concat(imgs, ignore_index=True),
               "attack": pd.DataFrame([info]), "neuron_first_covered": pd.concat(firsts, ignore_index=True)}
        if "coverage_curve" in res.extras:  # DLFuzz: neuron coverage after each iteration
            curve = res.extras["coverage_curve"].cpu().numpy()
            out["coverage"] = pd.DataFrame({"chunk": i, "iteration": range(len(curve)), "coverage": curve})
        if examples:
            out["examples"] = examples
        return out

    return [Unit(f"{i:05d}", lambda m, b, i=i, sl=sl: run(m, b, i, sl), (model, batch))
            for i, sl in enumerate(chunks(len(batch), spec.batch_size))]


def _first_covered_rows(model: ClassifierModel, neurons, x: torch.Tensor, threshold: float, chunk: int,
                        condition: str, strength: float) -> pd.DataFrame:
    """One row per neuron covered by some image of ``x`` ``[N,3,H,W]`` (one forward): its flat index
    (layers in order) and ``first``, the position in the chunk of the first image covering it;
    ``attrs["neurons"]`` = the number of neurons."""
    values = torch.cat(list(neuron_values(model, x, neurons, batch_size=len(x)).values()), 1)  # [N,T]
    first = first_covered(values, threshold)
    hit = (first >= 0).nonzero().squeeze(1)
    df = pd.DataFrame({"chunk": chunk, "condition": condition, "strength": float(strength),
                       "neuron": hit.cpu().numpy(), "first": first[hit].cpu().numpy()})
    df.attrs["neurons"] = values.shape[1]
    return df


def _examples(x, xc, clean, maps, names, cond, k) -> dict[str, torch.Tensor]:
    """Images and the first explainer's (min–max scaled) maps of the first ``k`` images (for the report's grids)."""
    method = next(iter(clean))
    out = {}
    for j in range(min(k, len(x))):
        out[example_key(names[j], "clean", "image")] = x[j]
        out[example_key(names[j], cond, "image")] = xc[j]
        for layer in clean[method]:
            out[example_key(names[j], "clean", layer)] = normalize_maps(clean[method][layer][j:j + 1])[0].half()
            out[example_key(names[j], cond, layer)] = normalize_maps(maps[method][layer][j:j + 1])[0].half()
    return out
