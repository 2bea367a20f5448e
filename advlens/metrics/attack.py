r"""Metrics of an attack: how visible the perturbation is and how well it fools the model.

:func:`psnr` and :func:`noise_rate` compare clean and adversarial images, one value per image;
:func:`attack_success_rate` reduces the success flags of a batch; :func:`misclassification_confidence`
gives, per image, how sure the model is of its (wrong) adversarial prediction (seed 004, § evaluation).
"""
from __future__ import annotations

import math

import torch

from advlens._checks import AdvlensError
from advlens.metrics._validate import check_data_range, check_pair, check_tensor, flatten
from advlens.metrics.similarity import ssim

__all__ = ["psnr", "noise_rate", "attack_success_rate", "misclassification_confidence"]


def psnr(x: torch.Tensor, x_adv: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    r"""Peak signal-to-noise ratio of each adversarial image against its clean image, in dB.

    .. math::

        \text{PSNR}(x_i, x^{adv}_i) = 10 \log_{10} \frac{L^2}{\text{MSE}(x_i, x^{adv}_i)},
        \qquad \text{MSE} = \frac{1}{CHW} \sum (x_i - x^{adv}_i)^2

    Seed 003 (Fig. 3) reports it to show how much noise FGSM adds. The MSE is taken per image (unlike
    :func:`kornia.metrics.psnr`, which pools the batch). An image identical to its reference has
    MSE = 0 and **PSNR = +inf** (as in ``skimage.metrics.peak_signal_noise_ratio``); exclude or clip those
    before averaging.

    Args:
        x: clean images.
        x_adv: adversarial images, same shape.
        data_range: the dynamic range :math:`L` of the pixel values (1.0 for images in [0, 1]).

    Returns:
        PSNR per image in dB, ``inf`` where the images are identical. Differentiable where finite.

    Shape:
        - x, x_adv: :math:`(N, C, H, W)` or :math:`(N, H, W)`.
        - Output: :math:`(N)`.

    Example:
        >>> x = torch.zeros(2, 3, 4, 4)
        >>> psnr(x, x + torch.tensor([0.1, 0.0]).view(2, 1, 1, 1))
        tensor([20., inf])
    """
    x, x_adv = check_pair(x, x_adv, names=("x", "x_adv"))
    data_range = check_data_range(data_range)
    mse = flatten(x - x_adv).pow(2).mean(dim=1)
    # log10(0) = -inf, so identical images give +inf without a special case.
    return 20.0 * math.log10(data_range) - 10.0 * torch.log10(mse)


def noise_rate(x: torch.Tensor, x_adv: torch.Tensor, **ssim_kw) -> torch.Tensor:
    r"""Noise rate of each adversarial image: one minus its SSIM to the clean image (seed 004).

    .. math::

        \text{noise rate}(x_i, x^{adv}_i) = 1 - \text{SSIM}(x_i, x^{adv}_i)

    Seed 004 measures the perturbation of ADV², AdvEdge and AdvEdge⁺ this way (its Fig. 5). The SSIM is
    :func:`advlens.metrics.ssim` (Gaussian window of 11 taps, sigma 1.5, reflect padding, averaged over
    channels and pixels); the seed does not state its window, so values are comparable across our attacks,
    not necessarily to the paper's numbers.

    Args:
        x: clean images.
        x_adv: adversarial images, same shape.
        **ssim_kw: ``window_size``, ``sigma``, ``data_range``, ``padding``, passed to :func:`ssim`.

    Returns:
        Noise rate per image in [0, 2]; 0 for an unchanged image. Differentiable.

    Shape:
        - x, x_adv: :math:`(N, C, H, W)` or :math:`(N, H, W)`.
        - Output: :math:`(N)`.

    Example:
        >>> x = torch.rand(2, 3, 32, 32)
        >>> noise_rate(x, x)
        tensor([0., 0.])
    """
    x, x_adv = check_pair(x, x_adv, names=("x", "x_adv"))
    return 1.0 - ssim(x, x_adv, **ssim_kw)


def _check_success(success: object, n: int | None = None) -> torch.Tensor:
    if not isinstance(success, torch.Tensor):
        raise AdvlensError(f"success must be a bool torch.Tensor of shape [N], got {type(success).__name__}")
    if success.dtype != torch.bool:
        raise AdvlensError(f"success must be a bool tensor (use .bool()), got dtype {success.dtype}")
    if success.ndim != 1 or success.numel() == 0:
        raise AdvlensError(f"success must have shape [N] with N >= 1, got {list(success.shape)}")
    if n is not None and success.shape[0] != n:
        raise AdvlensError(f"success must have shape [{n}] to match logits_adv, got {list(success.shape)}")
    return success


def attack_success_rate(success: torch.Tensor) -> torch.Tensor:
    r"""Fraction of successful attacks in a batch.

    .. math::

        \text{ASR} = \frac{1}{N} \sum_{i} \mathbb{1}[\text{success}_i]

    Args:
        success: per-image success flags, e.g. :attr:`AttackResult.success`.

    Returns:
        A 0-dim float tensor in [0, 1], on the device of ``success``.

    Shape:
        - success: :math:`(N)`, bool.
        - Output: :math:`()`.

    Example:
        >>> attack_success_rate(torch.tensor([True, False, True, True]))
        tensor(0.7500)
    """
    success = _check_success(success)
    return success.to(torch.get_default_dtype()).mean()


def misclassification_confidence(logits_adv: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    r"""Softmax probability of the class the model predicts on each adversarial image, NaN where it failed.

    .. math::

        \text{MC}_i = \max_k \operatorname{softmax}(z^{adv}_i)_k \quad \text{if success}_i,
        \qquad \text{NaN otherwise}

    Seed 004's misclassification confidence: how sure the fooled model is of its wrong answer (for a
    targeted attack that succeeded, the predicted class is the target). Failed attacks have no
    misclassification to score, so they are NaN rather than 0; average with :func:`torch.nanmean`, which
    gives the mean over successful attacks as in the seed.

    Args:
        logits_adv: the model's logits on the adversarial images.
        success: per-image success flags.

    Returns:
        Confidence per image in (0, 1], NaN where ``success`` is False. Dtype of the logits.

    Shape:
        - logits_adv: :math:`(N, K)`.
        - success: :math:`(N)`, bool.
        - Output: :math:`(N)`.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
        >>> misclassification_confidence(logits, torch.tensor([True, False]))
        tensor([0.5000,    nan])
    """
    logits_adv = check_tensor(logits_adv, "logits_adv", ndims=(2,))
    success = _check_success(success, logits_adv.shape[0])
    if success.device != logits_adv.device:
        raise AdvlensError(
            f"logits_adv and success must be on the same device, got {logits_adv.device} and {success.device}"
        )
    conf = torch.softmax(logits_adv, dim=1).amax(dim=1)
    return torch.where(success, conf, torch.full_like(conf, float("nan")))
