"""Study specifications: one typed schema per study, read from a TOML file or a named preset.

Every study declares its settings as a subclass of :class:`StudySpec` (the keys every study shares:
model and data, attack, seed, device, batch size…) and registers it with :func:`register_study` next
to its ``plan`` and ``report``. :func:`load_spec` validates a whole spec against that class before
anything runs: an unknown key, a wrong type or a value out of range is one line naming the key, the
value and the file. The validated spec is recorded in ``spec.json``; :meth:`StudySpec.identity` is
what a resumed run must match.

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
import importlib
import pkgutil
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from typing_extensions import Required, TypedDict

from .._checks import AdvlensError, unknown_name
from ..models.wrapper import COMPILE_MODES

__all__ = ["StudySpec", "load_spec", "register_study", "list_studies", "list_presets", "settings_for",
           "ModelEntry", "Strengths", "Explainers", "Layers", "Metrics", "KindTables", "FitSize"]

_STRICT = ConfigDict(extra="forbid", strict=True)

PositiveInt = Annotated[int, Field(ge=1)]
NaturalInt = Annotated[int, Field(ge=0)]
Split = Literal["train", "test"]


def _needs_key(key: str, example: str) -> AfterValidator:
    """A validator for a table that must name its ``key`` (``method``, ``kind``) with a string."""

    def check(table: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(table.get(key), str):
            raise ValueError(f"must be a table with a '{key}' key, e.g. {example}")
        return table

    return AfterValidator(check)


#: ``{method, **params}``
AttackTable = Annotated[dict[str, Any], _needs_key("method", "{method = 'fgsm', eps = 0.01}")]
#: ``{kind, **params}``
KindTable = Annotated[dict[str, Any], _needs_key("kind", "{kind = 'median', k = 3}")]


class ModelOptions(TypedDict, total=False):
    """Options of a model reference (``timm:NAME``, ``torchvision:NAME``, ``file.py:factory``…), as
    :func:`advlens.models.refs.load_reference` takes them: ``num_classes``, ``labels`` (a file or a
    list of names), ``mean``/``std`` (R, G, B), ``input_size`` (an int or ``[H, W]``)."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    num_classes: PositiveInt
    labels: str | list[str]
    mean: Annotated[list[float], Field(min_length=3, max_length=3)]
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=3, max_length=3)]
    input_size: Annotated[int, Field(ge=8)] | Annotated[list[Annotated[int, Field(ge=8)]], Field(min_length=2, max_length=2)]


class _Surrogate(TypedDict, total=False):
    """Another model of the same data that makes black-box (transfer) attacks (seed 003)."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    model: Required[str]
    data: str
    weights: str | None
    model_options: ModelOptions
    seed: NaturalInt


class ModelEntry(TypedDict, total=False):
    """One ``models`` entry: ``{model, data, weights?, model_options?, seed?, split?, n?, surrogate?, defense?}``.

    ``model`` is a registered name or a reference to your own network (``model_options`` then sets its
    classes, labels, normalization, input size); ``seed`` picks another training seed of a small model,
    ``n`` the size of a generated set (``shapes``), ``defense`` an input transform ``{kind, **params}``
    the model is put behind.
    """

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    model: Required[str]
    data: Required[str]
    weights: str | None
    model_options: ModelOptions
    seed: NaturalInt
    split: Split | None
    n: PositiveInt
    surrogate: _Surrogate
    defense: KindTable


# ----------------------------------------------------------------- field types several studies share
#: perturbation scales (seed 000/002) or FGSM eps values (seed 003)
Strengths = Annotated[list[Annotated[float, Field(gt=0, allow_inf_nan=False)]],
                      Field(min_length=1, default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])]
#: explanation methods per layer (see ``advlens.explain``)
Explainers = Annotated[list[str], Field(min_length=1, default_factory=lambda: ["gradcam"])]
#: ``"all"`` or a list of layer names
Layers = Annotated[Literal["all"] | Annotated[list[str], Field(min_length=1)], Field(default="all")]
#: similarity metrics per layer
Metrics = Annotated[list[Literal["cosine", "nissim", "ssim", "l1", "iou"]],
                    Field(min_length=1, default_factory=lambda: ["cosine", "nissim"])]
#: ``{kind, **params}`` tables (detectors, defenses)
KindTables = Annotated[list[KindTable], Field(default_factory=list)]
#: train-split images each detector is fitted on
FitSize = Annotated[int, Field(ge=8, default=300)]


class StudySpec(BaseModel):
    """The keys every study shares; each study adds its own in a registered subclass.

    Attributes:
        study: the pipeline (see :func:`list_studies`).
        model, weights, data, split: the model under study and its images, or ``models``: a list of
            :class:`ModelEntry` tables, one per architecture (used instead when given). ``model`` may be
            your own network (``timm:NAME``, ``torchvision:NAME``, ``file.py:factory``…) with
            ``model_options`` (:class:`ModelOptions`); ``data`` any source of :func:`advlens.data.load_images`
            (folders, ImageNet's wnid folders, a ``.csv``/``.parquet`` of ``path,label``).
        skip_bad: skip unreadable image files (named in warnings) instead of stopping.
        attack: ``{method, **params}``; what the parameters mean is the study's (see its module).
        limit: at most this many images per data set. seed: every random draw derives from it.
        device: torch device. batch_size: images per resumable chunk, or ``"auto"`` (fits free memory).
        examples: images whose maps are kept for the report's figures.
        precision, channels_last: ``bf16`` autocast / channels_last memory format.
        compile: ``off`` or a ``torch.compile`` mode for the hook-free forwards (attacks); like
            ``device``, not part of the study's identity.
    """

    model_config = _STRICT

    study: str = "layer_shift"
    model: str = "efficientnet_lite0"
    weights: str | None = None
    model_options: ModelOptions = Field(default_factory=dict)  # type: ignore[assignment]
    data: str = "samples"
    split: Split | None = None
    skip_bad: bool = False
    models: list[ModelEntry] = Field(default_factory=list)
    attack: AttackTable = Field(default_factory=lambda: {"method": "fgsm", "eps": 2 / 255})
    limit: PositiveInt | None = None
    seed: NaturalInt = 0
    device: str = "cpu"
    batch_size: PositiveInt | Literal["auto"] = 16
    examples: NaturalInt = 2
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"

    def to_dict(self) -> dict[str, Any]:
        """Every key and value (as recorded in ``spec.json``)."""
        return self.model_dump()

    def identity(self) -> dict[str, Any]:
        """The keys that decide the rows (all but ``device`` and ``compile``): a resumed run must match them.

        ``batch_size`` is included: it sets the images of each resumable chunk (``"auto"`` stays
        ``"auto"``; the size it resolved to is kept in ``spec.json`` and reused on resume).
        """
        d = self.to_dict()
        d.pop("device")
        d.pop("compile")
        if d["precision"] == "fp32" and not d["channels_last"]:  # the defaults: older folders stay resumable
            d.pop("precision")
            d.pop("channels_last")
        for key, default in (("model_options", {}), ("skip_bad", False)):  # newer keys at their defaults
            if d[key] == default:
                d.pop(key)
        return d


assert set(StudySpec.model_fields["compile"].annotation.__args__) == {"off", *COMPILE_MODES}  # one list of modes

_REGISTRY: dict[str, type[StudySpec]] = {}
_PRESETS: dict[str, dict[str, Any]] = {}


def register_study(name: str, settings: type[StudySpec],
                   presets: dict[str, dict[str, Any]] | None = None) -> type[StudySpec]:
    """Register study ``name`` (a module ``advlens.studies.<name>`` with ``plan``, ``report`` and optionally
    ``derived``), its settings class and its presets (``{preset: spec keys}``, the study's key added), next to
    the study. Returns ``settings``; a name or preset registered twice with another value is refused."""
    if _REGISTRY.get(name, settings) is not settings:
        raise ValueError(f"study {name!r} is already registered")
    _REGISTRY[name] = settings
    for preset, keys in (presets or {}).items():
        full = {"study": name, **keys}
        if _PRESETS.get(preset, full) != full:
            raise ValueError(f"study preset {preset!r} is already registered")
        _PRESETS[preset] = full
    return settings


def _discover() -> dict[str, type[StudySpec]]:
    """Import every study module of this package once (each registers itself)."""
    from .. import studies

    for info in pkgutil.iter_modules(studies.__path__):
        if not info.name.startswith("_") and info.name not in ("spec", "runner"):
            importlib.import_module(f"{studies.__name__}.{info.name}")  # cached after the first time
    return _REGISTRY


def list_studies() -> list[str]:
    """Names of the registered studies."""
    return sorted(_discover())


def settings_for(study: object) -> type[StudySpec]:
    """The settings class of ``study`` (one line naming the key when unknown)."""
    found = _discover()
    if not isinstance(study, str) or study not in found:
        raise unknown_name("study", study, sorted(found))
    return found[study]


def list_presets() -> list[str]:
    """Names of the registered study presets (each registered beside its study)."""
    _discover()
    return sorted(_PRESETS)


def __getattr__(name: str) -> Any:  # STUDIES and PRESETS are computed on first use (they import the studies)
    if name == "STUDIES":
        return tuple(list_studies())
    if name == "PRESETS":
        _discover()
        return dict(_PRESETS)
    raise AttributeError(name)




def _one_line(error: ValidationError, where: str, settings: type[StudySpec]) -> AdvlensError:
    """The first problem of a pydantic error as one line naming the key and the value."""
    errors = error.errors()
    first = errors[0]
    # union branches ("int", "literal['auto']") appear in locations; keep the user's keys and indices
    key = [p for p in first["loc"] if isinstance(p, int) or not any(c in str(p) for c in "[]()-")]
    name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in key).lstrip(".") or "spec"
    if first["type"] == "extra_forbidden":
        if len(key) == 1:  # a top-level key: suggest the study's keys
            study = settings.model_fields["study"].default
            hint = str(unknown_name("key", name, sorted(settings.model_fields))).removeprefix(f"unknown key {name!r}")
            return AdvlensError(f"{where}: unknown key {name!r} for a {study} study{hint}")
        return AdvlensError(f"{where}: unknown key '{name}'")
    same = [e for e in errors if [p for p in e["loc"] if isinstance(p, int) or p in key] == key]
    msgs = list(dict.fromkeys(e["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
                              .replace("Field required", "is required") for e in same))
    text = f"{where}: key '{name}': {' or '.join(msgs)[:240]}"
    return AdvlensError(text if first["type"] == "missing" else f"{text}, got {repr(first['input'])[:80]}")


def load_spec(source: str | Path | None = None, preset: str | None = None, **overrides: Any) -> StudySpec:
    """Build a study's spec from a TOML file and/or a preset, then apply non-None overrides, and validate
    it against the study's settings class.

    Returns:
        An instance of the study's registered :class:`StudySpec` subclass.

    Raises:
        AdvlensError: missing/unreadable file, TOML syntax error, unknown study or key, wrong type or range
            (one line naming the key and the value).
    """
    data: dict[str, Any] = {}
    where = "study spec"
    if preset is not None:
        if preset not in list_presets():
            raise unknown_name("study preset", preset, list_presets())
        data.update(copy.deepcopy(_PRESETS[preset]))
        where = f"preset {preset}"
    if source is not None:
        path = Path(source)
        if not path.is_file():
            raise AdvlensError(f"study spec not found: {path}")
        try:
            data.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
            raise AdvlensError(f"cannot parse study spec {path}: {' '.join(str(e).split())}") from None
        where = f"study spec {path}"
    data.update({k: v for k, v in overrides.items() if v is not None})
    settings = settings_for(data.get("study", StudySpec.model_fields["study"].default))
    try:
        return settings.model_validate(data)
    except ValidationError as e:
        raise _one_line(e, where, settings) from None
