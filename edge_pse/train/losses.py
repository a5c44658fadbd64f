"""Training losses: SI-SNR and a power-law compressed spectral loss (the E3Net paper's pair).

Both compare an output with a reference of the same length. A silent reference (target absent) has no
SI-SNR; for those rows only the spectral term counts, and it pushes the output towards silence.
"""

from __future__ import annotations

import torch

EPS = 1e-8


def si_snr(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-row SI-SNR in dB of est[B,T] against ref[B,T] (both zero-meaned)."""
    est = est - est.mean(dim=-1, keepdim=True)
    ref = ref - ref.mean(dim=-1, keepdim=True)
    proj = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + EPS) * ref
    noise = est - proj
    return 10 * torch.log10(proj.pow(2).sum(-1) / (noise.pow(2).sum(-1) + EPS) + EPS)


def compressed_spectral(
    est: torch.Tensor,
    ref: torch.Tensor,
    power: float = 0.3,
    n_fft: int = 512,
    hop: int = 128,
    complex_weight: float = 0.3,
    over_suppression: float = 1.0,
) -> torch.Tensor:
    """Per-row MSE between power-law compressed spectra (magnitude and compressed complex terms).

    `over_suppression` > 1 weighs magnitude that the estimate is missing (below the reference) that many times
    more than magnitude it has too much of: VoiceFilter-Lite's asymmetric loss (Wang et al., Interspeech 2020),
    against a speaker-selective model muting its own talker where it is unsure.
    """
    window = torch.hann_window(n_fft, device=est.device)
    e = torch.stft(est, n_fft, hop, window=window, return_complex=True)
    r = torch.stft(ref, n_fft, hop, window=window, return_complex=True)
    e_mag = (e.abs() + EPS).pow(power)
    r_mag = (r.abs() + EPS).pow(power)
    missing = r_mag - e_mag
    if over_suppression != 1.0:
        missing = torch.where(missing > 0, over_suppression * missing, missing)
    mag = missing.pow(2).mean(dim=(-2, -1))
    e_c = e_mag * torch.exp(1j * torch.angle(e))
    r_c = r_mag * torch.exp(1j * torch.angle(r))
    cplx = (e_c - r_c).abs().pow(2).mean(dim=(-2, -1))
    return (1 - complex_weight) * mag + complex_weight * cplx


def target_gain_db(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-row level of the reference's component in the estimate, in dB (0 = kept at its level)."""
    alpha = (est * ref).sum(-1) / (ref.pow(2).sum(-1) + EPS)
    return 20 * torch.log10(alpha.clamp_min(1e-3))


def enhancement_loss(
    est: torch.Tensor,
    ref: torch.Tensor,
    spectral_weight: float = 10.0,
    level_weight: float = 0.0,
    over_suppression: float = 1.0,
) -> torch.Tensor:
    """Mean over the batch of -SI-SNR/10 (rows with a target) + spectral_weight * compressed spectral loss
    + level_weight * (target gain in dB / 10)^2 (rows with a target). SI-SNR ignores scale and the compressed
    spectrum barely sees it, so without the level term a model that cannot yet tell what to keep turns its
    whole output down (~10 dB measured): the level term holds the target's voice at its input level.
    `over_suppression`: see compressed_spectral."""
    has_target = ref.pow(2).mean(-1) > 1e-10
    spec = compressed_spectral(est, ref, over_suppression=over_suppression)
    zeros = torch.zeros_like(spec)
    snr_term = torch.where(has_target, -si_snr(est, ref) / 10.0, zeros)
    loss = snr_term + spectral_weight * spec
    if level_weight:
        loss = loss + level_weight * torch.where(has_target, (target_gain_db(est, ref) / 10.0).pow(2), zeros)
    return loss.mean()
