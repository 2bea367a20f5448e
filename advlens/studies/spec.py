"""Study specifications: a TOML file or a named preset, validated, recorded in ``spec.json``.

A spec is declarative: model(s), data, attack and its parameters, strengths, explainers, layers,
metrics, seed, device, batch size. ``study`` names the pipeline (``layer_shift`` for seed 000,
``mod_vid`` for seed 003, ``interpreter_attack`` for seed 004, ``signatures`` for seed 001, ``detection``
for seeds 002 and 004, ``defenses`` for seeds 001/002/004's defenses under plain and adaptive attacks).

Example TOML::

    study = "layer_shift"
    model = "efficientnet_lite0"
    data = "samples"
    strengths = [0.25, 0.5, 1, 2, 4]
    explainers = ["gradcam"]
    [attack]
    method = "dlfuzz"
    strategy = 1
"""
from __future__ import annotations

import copy
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .._checks import AdvlensError, unknown_name
from ..models.wrapper import COMPILE_MODES

__all__ = ["StudySpec", "load_spec", "PRESETS", "STUDIES"]

STUDIES = ("layer_shift", "mod_vid", "interpreter_attack", "signatures", "detection", "defenses")


@dataclass
class StudySpec:
    """Everything a study run depends on (see the module docstring).

    Attributes:
        study: ``layer_shift`` (seed 000), ``mod_vid`` (seed 003), ``interpreter_attack`` (seed 004),
            ``signatures`` (seed 001) or ``detection`` (seeds 002, 004).
        model, weights, data: the model under study and its images (``layer_shift``).
        models: for ``mod_vid``: a list of ``{model, data, weights?, seed?, surrogate?}`` entries,
            one per architecture; ``surrogate`` is another such entry for black-box transfer.
        attack: ``{"method": name, **params}``; ``interpreter_attack`` also reads ``bases``
            (``pgd``/``cw``/``stadv``), ``variants`` (``adv2``/``advedge``/``advedge+``) and ``targeted``;
            ``signatures`` reads sub-tables ``ifgsm``, ``onepixel`` and ``lrp`` of parameters.
        strengths: perturbation scales (``layer_shift``) or FGSM eps values (``mod_vid``).
        explainers, layers, metrics: what to compute per layer (for ``interpreter_attack``:
            the interpreters attacked and evaluated, e.g. ``grad``, ``cam``, ``mask``, ``rts``).
        noise_rule: seed 000 threshold rule, ``median`` (paper) or ``mean`` (authors' code).
        explain_target: class each map explains: ``predicted`` (the input's own prediction, seed 000
            and 003) or ``clean`` (the clean image's prediction on every input: separates the
            shift of the features from the change of the explained class).
        limit: at most this many images (per data set); ``split``: ``test`` / ``train`` / None.
        detectors: for ``detection``: ``{kind, **params}`` tables (``behavior``, ``noisecam``,
            ``ensemble``; an ensemble with ``sets = true`` is also fitted on every interpreter subset).
        fit_size: for ``detection``: train-split images each detector is fitted on.
        defenses: for ``defenses``: ``{kind, **params}`` tables — ``none``, an input transform (``median``,
            ``squeeze``, ``blur``, ``jpeg``, ``noise``) or a training recipe (``retrain-fgsm``,
            ``retrain-onepixel``, ``pgd_at``, ``robust``); ``attacks = [...]`` limits the attacks run on it.
        precision, channels_last: run the models in ``bf16`` autocast / channels_last memory format
            (:meth:`ClassifierModel.set_precision`).
        compile: ``off`` or a ``torch.compile`` mode (``default``, ``reduce-overhead``, ``max-autotune``)
            for the hook-free forwards (attacks); like ``device``, not part of the study's identity.
    """

    study: str = "layer_shift"
    model: str = "efficientnet_lite0"
    weights: str | None = None
    data: str = "samples"
    models: list[dict[str, Any]] = field(default_factory=list)
    attack: dict[str, Any] = field(default_factory=lambda: {"method": "fgsm", "eps": 2 / 255})
    strengths: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])
    explainers: list[str] = field(default_factory=lambda: ["gradcam"])
    layers: str | list[str] = "all"
    metrics: list[str] = field(default_factory=lambda: ["cosine", "nissim"])
    noise_rule: str = "median"
    explain_target: str = "predicted"
    limit: int | None = None
    split: str | None = None
    seed: int = 0
    device: str = "cpu"
    batch_size: int | str = 16
    examples: int = 2
    detectors: list[dict[str, Any]] = field(default_factory=list)
    fit_size: int = 300
    defenses: list[dict[str, Any]] = field(default_factory=list)
    precision: str = "fp32"
    channels_last: bool = False
    compile: str = "off"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that decide the rows (all but the device): a resumed run must match them.

        ``batch_size`` is included: it sets the images of each resumable chunk (``"auto"`` stays
        ``"auto"``; the size it resolved to is kept in ``spec.json`` and reused on resume).
        """
        d = self.to_dict()
        d.pop("device")
        d.pop("compile")
        if d["study"] not in ("detection", "defenses"):  # fields only these read: older folders stay resumable
            d.pop("detectors")
            d.pop("fit_size")
        if d["study"] != "defenses":
            d.pop("defenses")
        if d["precision"] == "fp32" and not d["channels_last"]:  # the defaults: older folders stay resumable
            d.pop("precision")
            d.pop("channels_last")
        return d


PRESETS: dict[str, dict[str, Any]] = {
    # Seed 000 (Renkhoff, Tan et al.): DLFuzz perturbation, strengths 25 %–400 %, matched Gaussian noise,
    # Grad-CAM at every layer, cosine similarity, per-layer median-noise threshold.
    "seed000": {
        "study": "layer_shift", "model": "efficientnet_lite0", "data": "samples",
        "attack": {"method": "dlfuzz", "strategy": 1, "threshold": 0.25, "neurons": 10, "iterations": 1,
                   "step": 0.5 / 255, "lam": 0.5},
        "strengths": [0.25, 0.5, 1.0, 2.0, 4.0], "explainers": ["gradcam"], "metrics": ["cosine"],
    },
    # Seed 003 (Chakraborty et al.): FGSM eps 0.01-0.1 white-box and transferred from a surrogate,
    # Grad-CAM at every layer, NISSIM, MOD/VID, PSNR and accuracy per eps, across architectures.
    "seed003": {
        "study": "mod_vid",
        "models": [
            {"model": "small_vgg_lfw", "data": "lfw", "split": "test",
             "surrogate": {"model": "small_vgg_lfw", "seed": 1}},
            {"model": "small_vgg_digits", "data": "digits", "split": "test",
             "surrogate": {"model": "small_vgg_digits", "seed": 1}},
            {"model": "small_vgg_shapes", "data": "shapes", "split": "test", "n": 2500,
             "surrogate": {"model": "small_vgg_shapes", "seed": 1}},
            {"model": "efficientnet_lite0", "data": "samples"},
        ],
        "attack": {"method": "fgsm"}, "strengths": [0.01, 0.05, 0.075, 0.1],
        "explainers": ["gradcam"], "metrics": ["nissim"],
    },
    # Seed 004 (Abdukhamidov et al.): ADV², AdvEdge, AdvEdge⁺ over PGD against Grad, CAM, MASK and RTS,
    # eps 0.031, alpha 1/255, 300 iterations, random target classes; C&W and StAdv via "bases".
    "seed004": {
        "study": "interpreter_attack",
        "models": [{"model": "small_vgg_shapes", "data": "shapes", "split": "test", "n": 2500}],
        "attack": {"method": "advedge", "bases": ["pgd"], "variants": ["adv2", "advedge", "advedge+"],
                   "targeted": True, "eps": 0.031, "alpha": 1 / 255, "steps": 300, "mask_steps": 100},
        "explainers": ["grad", "cam", "mask", "rts"], "limit": 32,
    },
    # Seed 001 (Klawikowska et al.): iterative FGSM and one-pixel on trained models, LRP (preset A flat) of
    # clean vs attacked images, accuracy per test set (Table 1 'Clear'), UMAP of LRP signatures (Figs. 4-6).
    # One-pixel: Su et al.'s population 400 and F 0.5; 30 generations (not 100) keep a CPU run in minutes.
    "seed001": {
        "study": "signatures",
        "models": [{"model": "small_vgg_digits", "data": "digits", "split": "test"},
                   {"model": "small_vgg_lfw", "data": "lfw", "split": "test"}],
        "attack": {"method": "ifgsm+onepixel", "ifgsm": {"eps_step": 1 / 255, "max_eps": 32 / 255},
                   "onepixel": {"pixels": 1, "popsize": 400, "iterations": 30}},
        "limit": 32, "batch_size": 32,
    },
    # Seed 002 (Tan et al.): adversarial perturbation amplified 25 %-400 % vs matched Gaussian noise vs clean;
    # behaviour deviation (PCA, 50 copies), NoiseCAM + DBSCAN, and seed 004's interpretation ensemble with
    # every interpreter subset (Tables IV-V); Gaussian-blur accuracy beside. PGD stands in for DLFuzz.
    "seed002": {
        "study": "detection",
        "models": [{"model": "small_vgg_digits", "data": "digits", "split": "test"},
                   {"model": "small_vgg_shapes", "data": "shapes", "split": "test", "n": 2500}],
        "attack": {"method": "pgd", "eps": 0.031, "alpha": 0.031 / 8, "steps": 20},
        "strengths": [0.25, 0.5, 1.0, 2.0, 4.0],
        "detectors": [{"kind": "behavior", "copies": 50}, {"kind": "noisecam"},
                      {"kind": "ensemble", "interpreters": ["grad", "cam", "mask"], "backbone": "pixels",
                       "options": {"mask": {"steps": 100}}, "sets": True}],
        "limit": 64, "fit_size": 300, "batch_size": 64,
    },
    # Defenses (seed 001 Table 1, seed 004 Sec. VII-G / Table VI, seed 002's blur) under transfer, plain and
    # adaptive (BPDA / EOT) attacks; explanation shift as Kendall tau of Grad-CAM.
    "defenses": {
        "study": "defenses",
        "models": [{"model": "small_vgg_digits", "data": "digits", "split": "test"},
                   {"model": "small_vgg_shapes", "data": "shapes", "split": "test", "n": 2500},
                   {"model": "small_vgg_lfw", "data": "lfw", "split": "test"}],
        "attack": {"method": "fgsm+pgd+onepixel", "fgsm": {"eps": 0.1},
                   "pgd": {"eps": 0.031, "alpha": 0.031 / 8, "steps": 20},
                   "onepixel": {"pixels": 1, "popsize": 50, "iterations": 20}, "onepixel_limit": 32, "eot": 8,
                   "sweep": [2 / 255, 4 / 255, 6 / 255, 8 / 255, 10 / 255], "sweep_steps": 10},
        "defenses": [
            {"kind": "none"},
            {"kind": "median", "k": 3, "attacks": ["fgsm", "pgd"]},
            {"kind": "squeeze", "bits": 3, "attacks": ["fgsm", "pgd"]},
            {"kind": "blur", "sigma": 1.0, "attacks": ["fgsm", "pgd"]},
            {"kind": "jpeg", "quality": 75, "attacks": ["fgsm", "pgd"]},
            {"kind": "noise", "sigma": 0.1, "attacks": ["fgsm", "pgd"]},
            {"kind": "retrain-fgsm", "epochs": 3},
            {"kind": "retrain-onepixel", "epochs": 3, "n_attack": 300, "popsize": 50, "iterations": 20},
            {"kind": "pgd_at", "eps": 0.031, "steps": 5, "epochs": 3, "attacks": ["fgsm", "pgd"]},
            {"kind": "robust", "eps": 0.031, "steps": 5, "epochs": 3, "attacks": ["fgsm", "pgd"]},
        ],
        "detectors": [{"kind": "behavior", "copies": 20}, {"kind": "ensemble", "interpreters": ["grad", "cam"]}],
        "limit": 128, "fit_size": 300,
    },
}


def load_spec(source: str | Path | None = None, preset: str | None = None, **overrides: Any) -> StudySpec:
    """Build a :class:`StudySpec` from a TOML file and/or a preset, then apply non-None overrides.

    Raises:
        AdvlensError: missing/unreadable file, TOML syntax error, unknown keys, bad values.
    """
    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise unknown_name("study preset", preset, PRESETS)
        data.update(copy.deepcopy(PRESETS[preset]))
    if source is not None:
        path = Path(source)
        if not path.is_file():
            raise AdvlensError(f"study spec not found: {path}")
        try:
            data.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise AdvlensError(f"cannot parse study spec {path}: {e}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(StudySpec)}
    bad = sorted(set(data) - known)
    if bad:
        raise AdvlensError(f"unknown key(s) {bad} in study spec (known: {sorted(known)})")
    spec = StudySpec(**data)
    _validate(spec)
    return spec


def _validate(spec: StudySpec) -> None:
    if spec.study not in STUDIES:
        raise unknown_name("study", spec.study, STUDIES)
    if not isinstance(spec.attack, dict) or "method" not in spec.attack:
        raise AdvlensError("spec.attack must be a table with a 'method' key, e.g. {method = 'fgsm', eps = 0.01}")
    if not spec.strengths or any(not isinstance(s, (int, float)) or s <= 0 for s in spec.strengths):
        raise AdvlensError(f"strengths must be a non-empty list of positive numbers, got {spec.strengths!r}")
    if spec.noise_rule not in ("median", "mean"):
        raise AdvlensError(f"noise_rule must be 'median' or 'mean', got {spec.noise_rule!r}")
    if spec.explain_target not in ("predicted", "clean"):
        raise AdvlensError(f"explain_target must be 'predicted' or 'clean', got {spec.explain_target!r}")
    if spec.limit is not None and spec.limit < 1:
        raise AdvlensError(f"limit must be at least 1, got {spec.limit}")
    if spec.study == "mod_vid" and not spec.models:
        raise AdvlensError("a mod_vid study needs a 'models' list of {model, data} entries")
    if spec.precision not in ("fp32", "bf16"):
        raise AdvlensError(f"precision must be 'fp32' or 'bf16', got {spec.precision!r}")
    if spec.compile != "off" and spec.compile not in COMPILE_MODES:
        raise AdvlensError(f"compile must be 'off' or one of {list(COMPILE_MODES)}, got {spec.compile!r}")
    if spec.batch_size != "auto" and (isinstance(spec.batch_size, bool) or not isinstance(spec.batch_size, int)
                                      or spec.batch_size < 1):
        raise AdvlensError(f"batch_size must be a positive integer or 'auto', got {spec.batch_size!r}")
    if spec.fit_size < 8:
        raise AdvlensError(f"fit_size must be at least 8, got {spec.fit_size}")
    for d in spec.defenses:
        if not isinstance(d, dict) or "kind" not in d:
            raise AdvlensError(f"each entry of 'defenses' needs a 'kind' key, got {d!r}")
    for d in spec.detectors:
        if not isinstance(d, dict) or "kind" not in d:
            raise AdvlensError(f"each entry of 'detectors' needs a 'kind' key, got {d!r}")
    if spec.models:
        for m in spec.models:
            if not isinstance(m, dict) or "model" not in m or "data" not in m:
                raise AdvlensError(f"each entry of 'models' needs 'model' and 'data' keys, got {m!r}")
