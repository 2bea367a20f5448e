"""A resumable, deterministic fine-tuning loop with safetensors checkpoints.

:func:`fit` runs ``epochs`` passes of Adam over ``(x, y)`` in seeded random batches, minimizing
``batch_loss(model, xb, yb, seed)``, through advlens's one training loop
(:func:`advlens.models.fitting.train_epochs`). After every epoch it writes one checkpoint file (atomically):
the model's state dict (``model.*``), Adam's state tensors (``optim.<param>.<name>``), the batch
generator's state (``rng``), any ``extra`` tensors the recipe wants back on resume (``extra.*``, e.g.
the adversarial examples it trained on) and JSON metadata (epoch, optimizer groups, the recipe).
Given the same checkpoint path again (and the same recipe; only ``epochs`` may grow), :func:`fit`
restores all of it and continues from the next epoch; every batch's ``seed`` derives from ``(seed, epoch, batch)``, so an interrupted and resumed
run ends with the same weights as an uninterrupted one. Nothing is pickled.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._checks import AdvlensError, check_int, check_number
from .._io import atomic_write
from ..models.fitting import train_epochs
from ..models.wrapper import ClassifierModel

__all__ = ["fit", "read_checkpoint", "BatchLoss"]

BatchLoss = Callable[[ClassifierModel, torch.Tensor, torch.Tensor, int], torch.Tensor]


def _batch_seed(seed: int, epoch: int, batch: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + batch) % (2**31)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the metadata of a training checkpoint.

    Raises:
        AdvlensError: unreadable file or one that is not an advlens training checkpoint.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("advlens_checkpoint", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise AdvlensError(f"cannot read training checkpoint {path}: {type(e).__name__}: {str(e)[:120]}") from None
    if not isinstance(meta, dict) or "epoch" not in meta:
        raise AdvlensError(f"{path} is not an advlens training checkpoint")
    return tensors, meta


def _save(path: Path, model: ClassifierModel, opt: torch.optim.Optimizer, gen: torch.Generator,
          extra: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    from safetensors.torch import save

    state = opt.state_dict()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    for idx, s in state["state"].items():
        tensors.update({f"optim.{idx}.{k}": v.detach().cpu().contiguous() for k, v in s.items()})
    tensors["rng"] = gen.get_state()
    tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in extra.items()})
    meta = {**meta, "param_groups": state["param_groups"]}
    data = save(tensors, metadata={"advlens_checkpoint": json.dumps(meta)})
    atomic_write(path, lambda f: f.write(data))


def _restore(path: Path, model: ClassifierModel, opt: torch.optim.Optimizer, gen: torch.Generator,
             recipe: dict[str, Any]) -> tuple[int, dict[str, torch.Tensor]]:
    tensors, meta = read_checkpoint(path)
    same = {k: v for k, v in json.loads(json.dumps(recipe)).items() if k != "epochs"}
    if {k: v for k, v in (meta.get("recipe") or {}).items() if k != "epochs"} != same:
        raise AdvlensError(f"checkpoint {path} belongs to another training run ({meta.get('recipe')}); "
                           "use another --checkpoint path or remove it")
    dev = model.device
    model.net.load_state_dict({k[6:]: v.to(dev) for k, v in tensors.items() if k.startswith("model.")})
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            per_param.setdefault(int(idx), {})[name] = v if name == "step" else v.to(dev)
    opt.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    gen.set_state(tensors["rng"])
    extra = {k[6:]: v.to(dev) for k, v in tensors.items() if k.startswith("extra.")}
    return int(meta["epoch"]), extra


def fit(
    model: ClassifierModel,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_loss: BatchLoss,
    epochs: int,
    recipe: dict[str, Any],
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    extra: dict[str, torch.Tensor] | None = None,
    stop_after: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place on ``x`` ``[N,3,H,W]`` / ``y`` ``[N]`` (see the module docstring).

    Args:
        batch_loss: ``(model, xb, yb, seed) -> scalar loss``; called with the model in train mode.
        recipe: JSON-able description of the run; a checkpoint only resumes the same recipe.
        checkpoint: file written after every epoch and resumed from when it exists.
        extra: tensors stored in the checkpoint (restored ones are returned under ``"extra"``).
        stop_after: stop after this many epochs *of this call* (simulates an interruption).

    Returns:
        ``{"epochs" (completed so far), "resumed_from", "seconds", "loss" (mean per example over the last
        epoch of this call), "extra"}``.
    """
    epochs, lr = check_int(epochs, "epochs", 1), check_number(lr, "lr", 0)
    batch_size, seed = check_int(batch_size, "batch_size", 1), check_int(seed, "seed")
    params = [p for p in model.net.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    start_epoch, extra = 0, dict(extra or {})
    path = Path(checkpoint) if checkpoint else None
    if path is not None and path.is_file():
        start_epoch, restored = _restore(path, model, opt, gen, recipe)
        extra.update(restored)

    def step(idx: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        idx = idx.to(x.device)
        model.train()
        return batch_loss(model, x[idx], y[idx], _batch_seed(seed, epoch, batch))

    def on_epoch(epoch: int, loss: float) -> None:
        if path is not None:
            _save(path, model, opt, gen, extra, {"epoch": epoch + 1, "epochs": epochs, "recipe": recipe, "loss": loss})

    t0 = time.perf_counter()
    try:
        losses = train_epochs(params, opt, step, len(x), batch_size, epochs, gen, start_epoch=start_epoch,
                              on_epoch=on_epoch, stop_after=stop_after,
                              desc=f"train ({recipe.get('method', 'fit')})" if progress else None)
    finally:
        model.eval()
        for p in params:
            p.requires_grad_(False)
    done, last = len(losses), losses[-1] if losses else float("nan")
    return {"epochs": start_epoch + done, "resumed_from": start_epoch, "seconds": round(time.perf_counter() - t0, 2),
            "loss": last, "extra": extra}
