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
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

from .. import metrics as M
from .._checks import AdvlensError
from ..attacks import attack, matched_noise
from ..data import ImageBatch
from ..explain.api import layers_for, normalize_maps
from ..models import ClassifierModel
from ..report import Section, bar_plot, layer_shift_plot, map_grid, write_report
from ._common import chunks, load_entry, maps_in_batches, similarity_rows
from .runner import Unit
from .spec import Explainers, Layers, Metrics, Strengths, StudySpec, register_study

__all__ = ["LayerShiftSpec", "plan", "report", "compromise_table", "compromise_probability", "minmax_metrics",
           "counted_images"]


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


def minmax_metrics(metrics, map_normalization: str = "max") -> list[str]:
    """The metrics of ``metrics`` computed on min–max scaled maps; the rest take the raw maps.

    ``"max"`` (seed 000 § III-C, eq. 5): cosine on the raw maps, equal to the cosine of H / max H;
    ``"minmax"``: every metric on min–max scaled maps.
    """
    if map_normalization not in ("max", "minmax"):
        raise AdvlensError(f"map_normalization must be 'max' or 'minmax', got {map_normalization!r}")
    return [m for m in metrics if map_normalization == "minmax" or m != "cosine"]


register_study("layer_shift", LayerShiftSpec)


def plan(spec: LayerShiftSpec) -> list[Unit]:
    """One unit per chunk of ``batch_size`` images."""
    model, batch = load_entry({"model": spec.model, "data": spec.data, "weights": spec.weights,
                               "split": spec.split}, spec)
    for m in spec.explainers:  # fail on unknown explainers/layers before anything is written
        layers_for(model, m, spec.layers)
    params = {k: v for k, v in spec.attack.items() if k != "method"}

    def run(model: ClassifierModel, batch: ImageBatch, i: int, sl: slice) -> dict[str, Any]:
        x, names = batch.x[sl].to(model.device), batch.names[sl]
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
                imgs.append(pd.DataFrame({
                    "image": names, "strength": s, "condition": cond, "attack_success": success,
                    "label": y.cpu().numpy(),
                    "pred": pred.cpu().numpy(), "flipped": (pred != y).cpu().numpy(),
                    "psnr": M.psnr(x, xc).cpu().numpy(), "linf": (xc - x).abs().amax((1, 2, 3)).cpu().numpy(),
                }))
                if i == 0 and s == 1.0:
                    examples.update(_examples(x, xc, clean, maps, names, cond, spec.examples))
        info = {"chunk": i, "images": len(x), "attack_success": res.success_rate, "time_s": res.time_s}
        info.update({k: float(v) for k, v in res.extras.items() if k.startswith("coverage_") and v.ndim == 0})
        out = {"results": pd.concat(rows, ignore_index=True), "images": pd.concat(imgs, ignore_index=True),
               "attack": pd.DataFrame([info])}
        if "coverage_curve" in res.extras:  # DLFuzz: neuron coverage after each iteration
            curve = res.extras["coverage_curve"].cpu().numpy()
            out["coverage"] = pd.DataFrame({"chunk": i, "iteration": range(len(curve)), "coverage": curve})
        if examples:
            out["examples"] = examples
        return out

    return [Unit(f"{i:05d}", lambda m, b, i=i, sl=sl: run(m, b, i, sl), (model, batch))
            for i, sl in enumerate(chunks(len(batch), spec.batch_size))]


def _examples(x, xc, clean, maps, names, cond, k) -> dict[str, torch.Tensor]:
    """Images and the first explainer's (min–max scaled) maps of the first ``k`` images (for the report's grids)."""
    method = next(iter(clean))
    out = {}
    for j in range(min(k, len(x))):
        out[f"{names[j]}|clean|image"] = x[j]
        out[f"{names[j]}|{cond}|image"] = xc[j]
        for layer in clean[method]:
            out[f"{names[j]}|clean|{layer}"] = normalize_maps(clean[method][layer][j:j + 1])[0].half()
            out[f"{names[j]}|{cond}|{layer}"] = normalize_maps(maps[method][layer][j:j + 1])[0].half()
    return out


def counted_images(results: pd.DataFrame, count: str = "successful") -> pd.DataFrame:
    """The rows of the images seed 000 counts: ``successful`` = adversarial examples only (the rows whose
    ``attack_success`` is True; seed 000 § IV-A, § IV-E, Figs. 6–7), ``all`` = every image."""
    if count == "all":
        return results
    if count != "successful":
        raise AdvlensError(f"count must be 'successful' or 'all', got {count!r}")
    if "attack_success" not in results:
        raise AdvlensError("these results have no 'attack_success' column (written before issue 16): "
                           "count = 'successful' cannot pick the adversarial examples; use count = 'all'")
    return results[results.attack_success.astype(bool)]


def compromise_table(results: pd.DataFrame, rule: str = "median", metric: str = "cosine",
                     by: tuple[str, ...] = ("explainer", "strength"), count: str = "successful") -> pd.DataFrame:
    """Per image × ``by`` × layer: D_a, the layer's noise threshold, compromised (seed 000 eqs. 6–7, § III-C).

    The threshold of a layer is the ``rule`` (median or mean) of D_g over the counted images with
    the same ``by`` values (explainer and strength); compromised = D_a < threshold. ``count``
    (:func:`counted_images`): ``successful`` (paper) keeps only the images whose attack succeeded,
    for both D_a and the noise threshold; ``all`` keeps every image.
    """
    results = counted_images(results, count)
    keys = [*by, "layer"]
    noise = results[results.condition == "noise"]
    thr = noise.groupby(keys)[metric].agg(rule).rename("threshold").reset_index()
    adv = results[results.condition == "adversarial"].merge(thr, on=keys)
    adv["compromised"] = adv[metric] < adv["threshold"]
    return adv[["image", *keys, "layer_index", metric, "threshold", "compromised"]]


def compromise_probability(comp: pd.DataFrame) -> pd.DataFrame:
    """Per explainer × strength × layer: the fraction of the counted images that compromise the layer
    (seed 000 Fig. 6) and ``images``, how many images were counted."""
    return (comp.groupby(["explainer", "strength", "layer_index", "layer"])
            .agg(compromise_probability=("compromised", "mean"), images=("image", "nunique")).reset_index())


def report(out: Path, meta: dict, tables: dict[str, pd.DataFrame], examples: dict[str, torch.Tensor]) -> Path:
    spec = meta["spec"]
    res, imgs = tables["results"], tables.get("images")
    count = spec.get("count", "all")  # spec.json written before issue 16 has no 'count' (every image counted)
    comp = compromise_table(res, spec["noise_rule"], count=count)
    layer_order = list(dict.fromkeys(res.sort_values("layer_index").layer))
    figs = out / "figures"
    sections = []
    prob = compromise_probability(comp)
    total = res.image.nunique()
    who = ("adversarial examples only (images whose attack succeeded; seed 000 § IV-E)" if count == "successful"
           else "every image, whether or not its attack succeeded")
    for method in spec["explainers"]:
        c = comp[comp.explainer == method].assign(strength=lambda d: d.strength.map(lambda s: f"{s:g}×"))
        r = res[res.explainer == method].assign(
            condition=lambda d: d.condition + " " + d.strength.map(lambda s: f"{s:g}×"))
        f3 = layer_shift_plot(figs / f"shift_{method}.png", r, x="layer", y="cosine", hue="condition",
                              layer_order=layer_order, title=f"{method}: cosine similarity to the clean map")
        if c.empty:
            sections.append(Section(f"Compromised layers ({method})", f"Counted: {who}. No image was counted "
                                    f"(0 of {total}): nothing to report.", [f3]))
            continue
        f1 = bar_plot(figs / f"compromise_{method}.png", c.assign(compromised=c.compromised.astype(float)),
                      x="layer", y="compromised", hue="strength", annotate=False, errorbars=False,
                      title=f"{method}: probability that a layer is compromised, per strength",
                      ylabel="compromise probability")
        counts = c.groupby(["strength", "image"]).compromised.sum().rename("compromised layers").reset_index()
        hist = counts.groupby("strength")["compromised layers"].value_counts(normalize=True).rename(
            "fraction of images").reset_index().sort_values("compromised layers")
        f2 = bar_plot(figs / f"histogram_{method}.png", hist, x="compromised layers", y="fraction of images",
                      hue="strength", annotate=False, title=f"{method}: number of compromised layers per image")
        p = prob[prob.explainer == method]
        ranking = (p.sort_values(["strength", "compromise_probability"], ascending=[True, False])
                   .groupby("strength").head(5).reset_index(drop=True))
        wide = p.pivot(index="layer", columns="strength", values="compromise_probability").reindex(layer_order)
        n = p.groupby("strength").images.max()
        wide = wide.rename(columns=lambda s: f"{s:g}× ({n[s]} images)").reset_index()
        sections.append(Section(
            f"Compromised layers ({method})",
            f"A layer is compromised for an image when its adversarial similarity falls below the layer's "
            f"{spec['noise_rule']} noise similarity at the same strength (seed 000). Counted: {who} — "
            f"{int(n.max())} of {total} images; 'images' gives the count behind each probability. Ranking: "
            "the five most often compromised layers per strength.",
            [f1, f2, f3], [ranking, wide],
        ))
    if imgs is not None:
        flips = imgs.groupby(["strength", "condition"]).agg(
            flip_rate=("flipped", "mean"), psnr_db=("psnr", "mean"), max_linf=("linf", "max")).reset_index()
        sections.insert(0, Section("Attack and noise", "Label flips, PSNR and L∞ size per strength.", [],
                                   [flips, tables["attack"]] if "attack" in tables else [flips]))
    if "coverage" in tables:
        cov = tables["coverage"].assign(chunk=lambda d: "chunk " + d.chunk.astype(str),
                                        iteration=lambda d: d.iteration.astype(str))
        f_cov = layer_shift_plot(figs / "coverage.png", cov.assign(curve="neuron coverage"), x="iteration",
                                 y="coverage", hue="curve", layer_order=sorted(cov.iteration.unique(), key=int),
                                 title="DLFuzz: neuron coverage per iteration (mean over chunks)",
                                 xlabel="DLFuzz iteration")
        sections.insert(1, Section("Neuron coverage", "Fraction of neurons (channels of the explained layers) "
                                   "whose min–max scaled mean activation exceeds the threshold, over the "
                                   "images of a chunk, before and after each DLFuzz iteration.", [f_cov],
                                   [tables["coverage"]]))
    grids = _grids(figs, examples, layer_order)
    if grids:
        sections.append(Section("Maps at every depth", "Clean, adversarial and noise maps (strength 1×).", grids))
    params = {k: v for k, v in spec.items() if k != "models"}
    return write_report(out / "report.html", f"advlens study: {spec['study']} (seed 000)", sections, params,
                        meta.get("versions", {}))


def _grids(figs: Path, examples: dict[str, torch.Tensor], layer_order: list[str]) -> list[Path]:
    names = list(dict.fromkeys(k.split("|")[0] for k in examples))
    picks = [layer_order[round(i * (len(layer_order) - 1) / 5)] for i in range(6)] if len(layer_order) > 6 else layer_order
    paths = []
    for name in names:
        conds = [c for c in ("clean", "adversarial", "noise") if f"{name}|{c}|image" in examples]
        rows = {c: examples[f"{name}|{c}|image"][None].float() for c in conds}
        maps = {c: {l: examples[f"{name}|{c}|{l}"][None].float() for l in picks} for c in conds}
        safe = "".join(ch if ch.isalnum() else "_" for ch in name)
        paths.append(map_grid(figs / f"grid_{safe}.png", rows, maps, picks, title=name))
    return paths
