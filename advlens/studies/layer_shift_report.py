"""The layer-shift study's tables and report (see :mod:`advlens.studies.layer_shift` for what it runs).

Every number the report shows is one of :func:`derived`'s tables: which layers each attack compromised
(:func:`compromise_table`, :func:`compromise_probability`, :func:`compromised_layers_histogram`; seed 000
§ III-C), the attack-vs-noise similarity per layer (:func:`attack_noise_table`) and the neuron coverage of
the first n images (:func:`coverage_progression`; seed 000 § IV-B, Fig. 2).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .._checks import AdvlensError
from ..report import Section, bar_plot, layer_shift_plot, write_report
from ._examples import image_grids

__all__ = ["counted_images", "compromise_table", "compromise_probability", "compromised_layers_histogram",
           "attack_noise_table", "coverage_progression", "derived", "report"]


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
    (seed 000 Fig. 6), ``images`` (how many images were counted) and ``threshold``, the noise
    threshold of the layer that decided it (seed 000 § III-C)."""
    return (comp.groupby(["explainer", "strength", "layer_index", "layer"])
            .agg(compromise_probability=("compromised", "mean"), images=("image", "nunique"),
                 threshold=("threshold", "first")).reset_index())


def compromised_layers_histogram(comp: pd.DataFrame) -> pd.DataFrame:
    """Per explainer × strength: the fraction of the counted images with k compromised layers, for each k
    that occurs (seed 000 Fig. 7; 0 included), and ``images``, how many images were counted."""
    per_image = comp.groupby(["explainer", "strength", "image"]).compromised.sum().rename("compromised_layers")
    hist = per_image.reset_index().groupby(["explainer", "strength", "compromised_layers"]).size().rename("n")
    hist = hist.reset_index()
    hist["images"] = hist.groupby(["explainer", "strength"]).n.transform("sum")
    hist["fraction_of_images"] = hist.n / hist.images
    return hist.drop(columns="n").sort_values(["explainer", "strength", "compromised_layers"], ignore_index=True)


def attack_noise_table(images: pd.DataFrame) -> pd.DataFrame:
    """Per strength × condition over every image: label flip rate, mean PSNR (dB), largest L∞ and ``images``."""
    return images.groupby(["strength", "condition"]).agg(
        flip_rate=("flipped", "mean"), psnr_db=("psnr", "mean"), max_linf=("linf", "max"),
        images=("image", "nunique")).reset_index()


def coverage_progression(first: pd.DataFrame, attack: pd.DataFrame) -> pd.DataFrame:
    """Neuron coverage of the first n images of the data set (chunks in order), per condition × strength
    (seed 000 Fig. 2a/2b; ``clean`` has strength 0).

    Args:
        first: ``neuron_first_covered`` rows (chunk, condition, strength, neuron, first).
        attack: one row per chunk with ``chunk``, ``images`` and ``neurons`` (the neuron count).

    Returns:
        Columns condition, strength, images (n = 1 … N), coverage (fraction of all neurons covered by
        at least one of the first n images).
    """
    chunks = attack.sort_values("chunk")
    if chunks.neurons.nunique() != 1:
        raise AdvlensError(f"the chunks counted different numbers of neurons: {sorted(chunks.neurons.unique())}")
    offset = dict(zip(chunks.chunk, chunks.images.cumsum() - chunks.images))
    n_images, total = int(chunks.images.sum()), int(chunks.neurons.iloc[0])
    pos = first.assign(pos=first["first"] + first.chunk.map(offset))
    earliest = pos.groupby(["condition", "strength", "neuron"]).pos.min()
    rows = []
    for (cond, s), p in earliest.groupby(level=["condition", "strength"]):
        cov = np.bincount(p.to_numpy(), minlength=n_images).cumsum() / total
        rows.append(pd.DataFrame({"condition": cond, "strength": s, "images": np.arange(1, n_images + 1),
                                  "coverage": cov}))
    return pd.concat(rows, ignore_index=True)


def derived(meta: dict, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every number of the report: ``compromise_probability`` (Fig. 6, with the noise thresholds used),
    ``compromised_layers`` (Fig. 7), ``attack_noise`` (flips, PSNR), ``coverage_progression`` and
    ``neuron_coverage`` (Fig. 2; runs since issue 16), ``coverage_per_iteration`` (DLFuzz runs).
    Spec keys missing in an older ``spec.json`` take their old behaviour."""
    spec = meta["spec"]
    comp = compromise_table(tables["results"], spec.get("noise_rule", "median"), count=spec.get("count", "all"))
    out = {"compromise_probability": compromise_probability(comp),
           "compromised_layers": compromised_layers_histogram(comp)}
    if "images" in tables:
        out["attack_noise"] = attack_noise_table(tables["images"])
    if "neuron_first_covered" in tables and "neurons" in tables.get("attack", ()):
        prog = coverage_progression(tables["neuron_first_covered"], tables["attack"])
        out["coverage_progression"] = prog
        out["neuron_coverage"] = prog.groupby(["condition", "strength"], sort=False).tail(1).reset_index(drop=True)
    if "coverage" in tables:
        out["coverage_per_iteration"] = tables["coverage"].groupby("iteration").coverage.agg(
            coverage="mean", chunks="count").reset_index()
    return out


def _coverage_figures(figs: Path, prog: pd.DataFrame, strengths: list[float]) -> list[Path]:
    """Seed 000 Fig. 2a (adversarial vs noise at strength 1, or the middle strength) and 2b (adversarial
    per strength), coverage at up to 21 image counts; ``clean`` as reference."""
    n = int(prog.images.max())
    ticks = sorted({1, n, *(round(k * n / 20) for k in range(1, 20))} - {0})
    d = prog[prog.images.isin(ticks)].assign(
        images=lambda t: t.images.astype(str),
        curve=lambda t: t.condition.where(t.condition == "clean", t.condition + " " + _times(t).strength))
    ref = 1.0 if 1.0 in strengths else sorted(strengths)[len(strengths) // 2]
    kw = dict(x="images", y="coverage", hue="curve", layer_order=[str(t) for t in ticks], band=None,
              xlabel="images (data set order)", ylabel="neuron coverage")
    a = d[(d.condition == "clean") | (d.strength == ref)]
    b = d[d.condition != "noise"]
    return [layer_shift_plot(figs / "coverage_adversarial_vs_noise.png", a, **kw,
                             title=f"Neuron coverage: adversarial vs matched noise ({ref:g}×)"),
            layer_shift_plot(figs / "coverage_per_strength.png", b, **kw,
                             title="Neuron coverage of the adversarial inputs per strength")]


def _times(t: pd.DataFrame) -> pd.DataFrame:
    """``strength`` as the label ``"2×"`` (categorical hue of the bar plots)."""
    return t.assign(strength=t.strength.map(lambda s: f"{s:g}×"))


def report(out: Path, meta: dict, tables: dict[str, pd.DataFrame], examples: dict[str, torch.Tensor]) -> Path:
    """``report.html``: every number from the :func:`derived` tables (computed here if absent)."""
    spec = meta["spec"]
    res = tables["results"]
    if not {"compromise_probability", "compromised_layers"} <= tables.keys():
        tables = {**tables, **derived(meta, tables)}
    count = spec.get("count", "all")  # spec.json written before issue 16 has no 'count' (every image counted)
    layer_order = list(dict.fromkeys(res.sort_values("layer_index").layer))
    figs = out / "figures"
    sections = []
    prob, hist_all = tables["compromise_probability"], tables["compromised_layers"]
    total = res.image.nunique()
    who = ("adversarial examples only (images whose attack succeeded; seed 000 § IV-E)" if count == "successful"
           else "every image, whether or not its attack succeeded")
    for method in spec["explainers"]:
        r = res[res.explainer == method].assign(
            condition=lambda d: d.condition + " " + d.strength.map(lambda s: f"{s:g}×"))
        f3 = layer_shift_plot(figs / f"shift_{method}.png", r, x="layer", y="cosine", hue="condition",
                              layer_order=layer_order, title=f"{method}: cosine similarity to the clean map")
        p = prob[prob.explainer == method].sort_values(["strength", "layer_index"])
        if p.empty:
            sections.append(Section(f"Compromised layers ({method})", f"Counted: {who}. No image was counted "
                                    f"(0 of {total}): nothing to report.", [f3]))
            continue
        f1 = bar_plot(figs / f"compromise_{method}.png", _times(p), x="layer", y="compromise_probability",
                      hue="strength", annotate=False, errorbars=False,
                      title=f"{method}: probability that a layer is compromised, per strength",
                      ylabel="compromise probability")
        hist = _times(hist_all[hist_all.explainer == method].sort_values(["compromised_layers", "strength"]))
        f2 = bar_plot(figs / f"histogram_{method}.png", hist, x="compromised_layers", y="fraction_of_images",
                      hue="strength", annotate=False, title=f"{method}: number of compromised layers per image")
        ranking = (p.sort_values(["strength", "compromise_probability"], ascending=[True, False])
                   .groupby("strength").head(5).reset_index(drop=True))
        wide = p.pivot(index="layer", columns="strength", values="compromise_probability").reindex(layer_order)
        n = p.groupby("strength").images.max()
        wide = wide.rename(columns=lambda s: f"{s:g}× ({n[s]} images)").reset_index()
        sections.append(Section(
            f"Compromised layers ({method})",
            f"A layer is compromised for an image when its adversarial similarity falls below the layer's "
            f"{spec['noise_rule']} noise similarity at the same strength ('threshold'; seed 000). Counted: "
            f"{who} — {int(n.max())} of {total} images; 'images' gives the count behind each probability. "
            "Ranking: the five most often compromised layers per strength.",
            [f1, f2, f3], [ranking, wide],
        ))
    if "attack_noise" in tables:
        sections.insert(0, Section("Attack and noise", "Label flips, PSNR and L∞ size per strength (every image).",
                                   [], [tables["attack_noise"], tables["attack"]] if "attack" in tables
                                   else [tables["attack_noise"]]))
    cov_sections = []
    if "coverage_progression" in tables:
        layers = {"dlfuzz": "every conv, pooling and dense layer, as DLFuzz",
                  "explained": "channels of the explainable layers"}[spec.get("coverage_layers", "explained")]
        cov_sections.append(Section(
            "Neuron coverage (seed 000 Fig. 2)",
            f"Fraction of neurons ({layers}) "
            f"whose min–max scaled mean activation exceeds {spec.get('coverage_threshold', 0.25):g}, over the first "
            "n images: adversarial inputs vs matched noise (2a) and per strength (2b); every image counts.",
            _coverage_figures(figs, tables["coverage_progression"], spec["strengths"]), [tables["neuron_coverage"]]))
    if "coverage_per_iteration" in tables:
        cov = tables["coverage_per_iteration"].assign(iteration=lambda d: d.iteration.astype(str), curve="coverage")
        f_cov = layer_shift_plot(figs / "coverage.png", cov, x="iteration", y="coverage", hue="curve",
                                 layer_order=sorted(cov.iteration.unique(), key=int), band=None,
                                 title="DLFuzz: neuron coverage per iteration (mean over chunks)",
                                 xlabel="DLFuzz iteration")
        cov_sections.append(Section("Neuron coverage during DLFuzz", "Coverage of the DLFuzz neurons over the "
                                    "images of a chunk, before and after each iteration (mean over chunks).",
                                    [f_cov], [tables["coverage_per_iteration"]]))
    sections[1:1] = cov_sections
    grids = _grids(figs, examples, layer_order)
    if grids:
        sections.append(Section("Maps at every depth", "Clean, adversarial and noise maps (strength 1×).", grids))
    params = {k: v for k, v in spec.items() if k != "models"}
    return write_report(out / "report.html", f"advlens study: {spec['study']} (seed 000)", sections, params,
                        meta.get("versions", {}))


def _grids(figs: Path, examples: dict[str, torch.Tensor], layer_order: list[str]) -> list[Path]:
    picks = [layer_order[round(i * (len(layer_order) - 1) / 5)] for i in range(6)] if len(layer_order) > 6 else layer_order
    return image_grids(figs, examples, picks, conditions=("clean", "adversarial", "noise"),
                       stem=lambda j, name: f"grid_{''.join(ch if ch.isalnum() else '_' for ch in name)}")
