"""The demo study: FGSM and PGD on EfficientNet-Lite0 and the bundled photos, seen through
Grad-CAM, Grad-CAM++ and LayerCAM at every layer, against matched Gaussian noise (seed 000).

For each image, attack and layer it records how similar the explanation of the adversarial
image is to the clean one (cosine of the maps H / max H, i.e. of the raw maps, seed 000 eqs. 5–6;
NISSIM of min–max scaled maps, seed 003 eq. 1), and the same for Gaussian noise with the
perturbation's mean and standard deviation. A layer is *compromised* for an image when the
adversarial similarity falls below the layer's median noise similarity; compromise probabilities
count the images whose attack succeeded (seed 000 § IV-E).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .. import metrics
from .._io import OutputDir, versions, write_json, write_parquet
from ..attacks import attack, matched_noise
from ..data import load_images
from ..models import load_model
from ..report import Section, bar_plot, layer_shift_plot, map_grid, write_report
from ..explain.api import normalize_maps
from ._common import maps_in_batches, similarity_rows
from .layer_shift import compromise_table

__all__ = ["DemoConfig", "run_demo"]

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Parameters of the demo (all recorded in ``spec.json`` and the report)."""

    model: str = "efficientnet_lite0"
    images: str = "samples"
    limit: int | None = None
    methods: tuple[str, ...] = ("gradcam", "gradcam++", "layercam")
    attacks: dict[str, dict] = field(
        default_factory=lambda: {
            "fgsm": {"eps": 2 / 255},
            "pgd": {"eps": 2 / 255, "alpha": 0.5 / 255, "steps": 10, "random_start": False},
        }
    )
    noise_strength: float = 1.0
    batch_size: int = 8
    seed: int = 0
    device: str = "cpu"


def run_demo(cfg: DemoConfig, out: str | Path, progress: bool = True, overwrite: bool = False) -> Path:
    """Run the demo and write ``out/``: ``results.parquet``, ``spec.json``, ``figures/``, ``report.html``.

    ``out`` is checked before any work and filled at the end (:class:`advlens._io.OutputDir`: nothing
    half-written on failure, nothing advlens did not write is replaced; ``overwrite`` writes beside the
    files of a non-empty folder).
    """
    from tqdm.auto import tqdm

    folder = OutputDir(out, "demo", inputs=[cfg.images], overwrite=overwrite)

    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model, device=cfg.device)
    batch = load_images(cfg.images, size=model.input_size, n=cfg.limit, seed=cfg.seed).to(model.device)
    if cfg.limit is not None:
        batch = batch[: cfg.limit]
    x = batch.x
    steps = ["classify", *[f"attack {a}" for a in cfg.attacks], "explain", "metrics", "report"]
    bar = tqdm(total=len(steps), desc="advlens demo", unit="step", disable=not progress)
    t0 = time.perf_counter()

    bar.set_postfix_str("classify")
    y = model.predict(x)  # attack each image's clean prediction
    bar.update()
    images = {"clean": x}
    results_by_attack = {}
    for name, params in cfg.attacks.items():
        bar.set_postfix_str(f"attack {name}")
        res = results_by_attack[name] = attack(model, x, y, method=name, seed=cfg.seed, **params)
        images[name] = res.x_adv
        images[f"{name} noise"] = matched_noise(x, res.x_adv, cfg.noise_strength, seed=cfg.seed)
        bar.update()

    bar.set_postfix_str("explain")
    raw, maps, preds = {}, {}, {}
    for cond, imgs in images.items():  # the predictions come from the same forward as the maps
        raw[cond], preds[cond] = maps_in_batches(model, imgs, cfg.methods, "all", cfg.batch_size, normalize=False)
        maps[cond] = {m: {n: normalize_maps(t) for n, t in per.items()} for m, per in raw[cond].items()}
    labels = pd.Series(model.labels)
    attacks_df = pd.concat([pd.DataFrame({
        "image": batch.names, "attack": name, "clean_pred": labels[y.cpu().numpy()].to_numpy(),
        "adv_pred": labels[res.pred.cpu().numpy()].to_numpy(), "success": res.success.cpu().numpy(),
        "adv_confidence": res.confidence.cpu().numpy(),
        "noise_flips": (preds[f"{name} noise"] != y).cpu().numpy(),
        "linf": (res.x_adv - x).abs().amax((1, 2, 3)).cpu().numpy(),
        "psnr": metrics.psnr(x, res.x_adv).cpu().numpy(), "time_s": res.time_s / len(x),
    }) for name, res in results_by_attack.items()], ignore_index=True)
    bar.update()

    bar.set_postfix_str("metrics")
    # cosine of the raw maps (= of H / max H, seed 000 eq. 5), NISSIM of min-max scaled maps (seed 003 eq. 1)
    results = pd.concat([
        similarity_rows(raw["clean"], raw[cond], batch.names, ("cosine", "nissim"), ("nissim",), attack=a,
                        condition=kind, attack_success=results_by_attack[a].success.cpu().numpy())
        for a in cfg.attacks for kind, cond in (("adversarial", a), ("noise", f"{a} noise"))
    ], ignore_index=True)
    compromised = _compromised(results)
    bar.update()

    bar.set_postfix_str("report")
    spec = {"study": "demo", **asdict(cfg), "n_images": len(x), "image_names": batch.names,
            "versions": versions(), "seconds": round(time.perf_counter() - t0, 1)}
    out = Path(out)
    with folder.writing() as tmp:
        write_parquet(results, tmp / "results.parquet")
        write_parquet(attacks_df, tmp / "attacks.parquet")
        write_json(spec, tmp / "spec.json")
        figs = _figures(tmp / "figures", model, images, maps, results, attacks_df, cfg)
        _report(tmp, figs, results, attacks_df, compromised, spec)
    bar.update()
    bar.close()
    log.info("demo written to %s in %.1f s", out, time.perf_counter() - t0)
    return out


def _compromised(results: pd.DataFrame) -> pd.DataFrame:
    """Per attack × explainer × layer: fraction of the images whose attack succeeded that compromise the
    layer (seed 000 rule, § IV-E), and ``images``, how many were counted."""
    table = compromise_table(results, "median", by=("attack", "explainer"))
    return (table.groupby(["attack", "explainer", "layer_index", "layer"])
            .agg(compromise_probability=("compromised", "mean"), images=("image", "nunique")).reset_index())


def _figures(folder: Path, model, images, maps, results, attacks_df, cfg) -> dict[str, list[Path]]:
    layers = list(model.layers)
    picks = [layers[round(i * (len(layers) - 1) / 4)] for i in range(5)]  # 5 depths, first to last
    figs: dict[str, list[Path]] = {"grids": [], "shift": [], "attacks": []}
    for i in range(min(2, len(images["clean"]))):
        for m in cfg.methods[:1]:
            figs["grids"].append(map_grid(
                folder / f"grid_{i}_{m}.png", images, {c: maps[c][m] for c in images}, picks, index=i,
                title=f"{m} at five depths of {model.name}",
            ))
    for m in cfg.methods:
        df = results[results.explainer == m].assign(
            condition=lambda d: d.condition + " (" + d.attack + ")"
        )
        figs["shift"].append(layer_shift_plot(
            folder / f"shift_{m}.png", df, x="layer", y="cosine", hue="condition", layer_order=layers,
            title=f"{m}: cosine similarity to the clean map, per layer",
        ))
    figs["attacks"].append(bar_plot(
        folder / "attacks.png", attacks_df.assign(success=attacks_df.success.astype(float)),
        x="attack", y="success", title="attack success rate",
    ))
    return figs


def _report(folder: Path, figs, results, attacks_df, compromised, spec) -> Path:
    summary = attacks_df.groupby("attack").agg(
        success_rate=("success", "mean"), noise_flip_rate=("noise_flips", "mean"),
        mean_confidence=("adv_confidence", "mean"), mean_psnr_db=("psnr", "mean"),
        max_linf=("linf", "max"), seconds_per_image=("time_s", "mean"),
    ).reset_index()
    per_layer = results.groupby(["attack", "explainer", "condition", "layer_index", "layer"]).cosine.median().unstack("condition")
    per_layer = per_layer.reset_index().rename(columns={"adversarial": "median_cos_adversarial", "noise": "median_cos_noise"})
    top = compromised.sort_values("compromise_probability", ascending=False).groupby(["attack", "explainer"]).head(3)
    sections = [
        Section("Attacks", f"Untargeted attacks on {spec['n_images']} images against their clean predictions.",
                figs["attacks"], [summary, attacks_df]),
        Section("Explanation shift per layer",
                "Cosine similarity between each layer's map of the clean image and of the attacked image, "
                "versus Gaussian noise with the same mean and standard deviation (seed 000). Lines: median; "
                "bands: interquartile range.", figs["shift"], [per_layer]),
        Section("Maps at several depths", "Rows: clean, adversarial and matched-noise images; columns: layers.",
                figs["grids"]),
        Section("Compromised layers",
                "Fraction of the adversarial examples (images whose attack succeeded; 'images' counts them) "
                "whose adversarial similarity falls below the layer's median noise similarity (seed 000); the "
                "three most compromised layers per attack and method.", [], [top]),
    ]
    params = {k: v for k, v in spec.items() if k not in ("versions", "image_names")}
    return write_report(folder / "report.html", "advlens demo", sections, params, spec["versions"])
