"""Metrics: per-sample similarity of maps and images, attack metrics, and the seeds' aggregates.

Every per-sample function returns a ``Tensor [N]`` on the input's device; reductions are explicit
(:func:`mod`, :func:`vid`, :func:`attack_success_rate`, :func:`compromised`).

Example:
    >>> import advlens as al
    >>> maps_clean, maps_adv = torch.rand(4, 56, 56), torch.rand(4, 56, 56)
    >>> al.metrics.nissim(maps_clean, maps_adv).shape
    torch.Size([4])
"""
from advlens.metrics.aggregate import compromise_threshold, compromised, mod, vid
from advlens.metrics.attack import attack_success_rate, misclassification_confidence, noise_rate, psnr
from advlens.metrics.coverage import CoverageTracker, neuron_coverage, neuron_values
from advlens.metrics.rank import kendall_tau
from advlens.metrics.similarity import L1, NISSIM, SSIM, Cosine, cosine, iou, l1, nissim, ssim

__all__ = [
    "cosine",
    "ssim",
    "nissim",
    "l1",
    "iou",
    "kendall_tau",
    "psnr",
    "noise_rate",
    "attack_success_rate",
    "misclassification_confidence",
    "mod",
    "vid",
    "compromise_threshold",
    "compromised",
    "Cosine",
    "SSIM",
    "NISSIM",
    "L1",
    "neuron_coverage",
    "neuron_values",
    "CoverageTracker",
]
