"""E3Net (Thakker et al., Interspeech 2022), the offline (training) form.

encoder -> speaker fusion -> LSTM blocks (the masker) -> mask applied -> decoder, causal throughout.
`edge_pse.model.step` rebuilds the same weights as a one-hop streaming step for export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge_pse.model.config import E3NetConfig


class PReLU(nn.Module):
    """Per-channel PReLU over the last dim, written as relu(y) - a * relu(-y).

    nn.PReLU wants channels in dim 1, and after a Linear it breaks ExecuTorch's XNNPACK lowering; the two-relu
    form is the same function and quantizes and delegates on every backend (docs/toolchain.md).
    """

    def __init__(self, channels: int, init: float = 0.25) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) - self.weight * F.relu(-x)


def frame_gain(power: torch.Tensor, target: float, max_gain: float) -> torch.Tensor:
    """target / rms, at most `max_gain` (a silent frame keeps its silence instead of dividing by zero)."""
    return torch.clamp(target * torch.rsqrt(power + 1e-12), max=max_gain)


class FeedForward(nn.Module):
    """Linear, PReLU, Linear, PReLU, LayerNorm: the block's projection in front of its LSTM."""

    def __init__(self, width: int, ff_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, ff_dim)
        self.act1 = PReLU(ff_dim)
        self.fc2 = nn.Linear(ff_dim, width)
        self.act2 = PReLU(width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act2(self.fc2(self.act1(self.fc1(x)))))


class LSTMBlock(nn.Module):
    """feed-forward -> LSTM -> LayerNorm -> residual -> LayerNorm."""

    def __init__(self, width: int, ff_dim: int) -> None:
        super().__init__()
        self.ff = FeedForward(width, ff_dim)
        self.lstm = nn.LSTM(width, width, batch_first=True)
        self.lstm_norm = nn.LayerNorm(width)
        self.out_norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(self.ff(x))
        return self.out_norm(x + self.lstm_norm(y))


class SpeakerAdaptation(nn.Module):
    """Per-channel scale (and, for FiLM, shift) of a block's input, computed from the standardised embedding.

    Zero-initialised, so a fresh adaptation is the identity and training starts from the plain E3Net. At run
    time the step computes it from the embedding like any Linear (per hop; a handful of MACs per channel).
    """

    def __init__(self, spk_dim: int, width: int, shift: bool) -> None:
        super().__init__()
        self.scale = nn.Linear(spk_dim, width)
        self.shift = nn.Linear(spk_dim, width) if shift else None
        for lin in (self.scale, self.shift):
            if lin is not None:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x[B,F,W] adapted by z[B,D] (broadcast over frames)."""
        out = x * (1 + self.scale(z)).unsqueeze(1)
        if self.shift is not None:
            out = out + self.shift(z).unsqueeze(1)
        return out


class E3Net(nn.Module):
    """Personalized speech enhancement on raw 16 kHz audio, conditioned on a speaker embedding.

    `forward(wave[B,T], spk[B,D]) -> wave[B,T]`. The output stream lags the input by one hop
    (`cfg.output_delay` samples): output sample n is the enhanced input sample n - hop. This is exactly
    what the streaming step emits hop by hop; `enhance` gives the time-aligned version.
    """

    def __init__(self, cfg: E3NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, w = cfg.n_filters, cfg.width
        # encoder
        self.encoder = nn.Conv1d(1, n, kernel_size=cfg.window, stride=cfg.hop)
        self.enc_act = PReLU(n)
        self.enc_norm = nn.LayerNorm(n)
        # speaker fusion: [features ; d-vector] -> width
        self.fusion = nn.Linear(n + cfg.spk_dim, w)
        self.fusion_act = PReLU(w)
        self.fusion_norm = nn.LayerNorm(w)
        if cfg.standardised:  # the training population's d-vector statistics (set_speaker_stats); folded at export
            self.register_buffer("spk_mean", torch.zeros(cfg.spk_dim))
            self.register_buffer("spk_std", torch.ones(cfg.spk_dim))
        self.adapt = (
            nn.ModuleList(SpeakerAdaptation(cfg.spk_dim, w, cfg.conditioning == "film") for _ in range(cfg.n_blocks))
            if cfg.per_block
            else None
        )
        # masker
        self.blocks = nn.ModuleList(LSTMBlock(w, cfg.ff_dim) for _ in range(cfg.n_blocks))
        self.mask = nn.Linear(w, n)
        # decoder (no bias: a bias would be added once per sample after overlap-add, not per frame)
        self.decoder = nn.ConvTranspose1d(n, 1, kernel_size=cfg.window, stride=cfg.hop, bias=False)
        self.init_filterbank()

    @torch.no_grad()
    def init_filterbank(self) -> None:
        """Start the learnable encoder/decoder as a windowed Fourier basis that reconstructs its input.

        Random filters must first learn to reconstruct audio before masking can help, which costs thousands
        of steps on a CPU. Here the first min(N, window) encoder filters are sqrt-Hann windowed DFT basis
        vectors (lowest frequencies first), the decoder holds the same vectors (overlap-add of the squared
        window is 1), and the encoder's PReLU starts linear, so the untrained model already outputs its
        input (scaled by the near-uniform initial mask). With N < window (tiny) the basis covers the lowest N/2 bins
        (0-6.4 kHz for N=256). Filters beyond the basis keep their random init and a zero decoder row.
        """
        win, n = self.cfg.window, self.cfg.n_filters
        t = torch.arange(win, dtype=torch.float64)
        sqrt_hann = torch.sin(torch.pi * t / win)  # sqrt of the periodic Hann window: its squares sum to 1 at hop
        basis = []
        for k in range(win // 2 + 1):
            c = torch.cos(2 * torch.pi * k * t / win)
            basis.append(c / c.norm())
            if 0 < k < win // 2:
                s_ = torch.sin(2 * torch.pi * k * t / win)
                basis.append(s_ / s_.norm())
        m = min(n, win)
        b = torch.stack(basis[:m]) * sqrt_hann  # [m, win]
        self.encoder.weight[:m, 0] = b.float()
        self.encoder.bias.zero_()
        self.decoder.weight.zero_()
        self.decoder.weight[:m, 0] = b.float()
        self.enc_act.weight.fill_(1.0)
        # a near-uniform initial mask, so the untrained model is close to a scaled identity
        self.mask.weight.mul_(0.1)
        self.mask.bias.zero_()

    # dims whose population std is below this are scaled as if it were this: resemblyzer's ReLU leaves some
    # dimensions almost always 0, and dividing a rare non-zero value by ~0 would blow it up
    MIN_SPK_STD = 0.01

    @torch.no_grad()
    def set_speaker_stats(self, embeddings: torch.Tensor) -> None:
        """Standardise the embedding by these d-vectors' per-dimension mean and std (training speakers)."""
        if not self.cfg.standardised:
            return
        self.spk_mean.copy_(embeddings.mean(0))
        self.spk_std.copy_(embeddings.std(0).clamp_min(self.MIN_SPK_STD))

    def speaker(self, spk: torch.Tensor) -> torch.Tensor:
        """The embedding as the network sees it: standardised, or raw for `concat`."""
        return (spk - self.spk_mean) / self.spk_std if self.cfg.standardised else spk

    def frame_gain(self, wave: torch.Tensor) -> torch.Tensor | None:
        """[B,T] -> [B,F,1]: the gain that brings each analysis window to `cfg.frame_level_dbfs` rms (None: off).

        The encoder is linear in its window, so scaling the window equals scaling the filters' output; the
        decoder's frame is divided by the same gain before overlap-add (the step does the same per hop).
        """
        limits = self.cfg.frame_gain_limits
        if limits is None:
            return None
        target, max_gain = limits
        x = F.pad(wave, (self.cfg.hop, 0))
        power = x.unfold(-1, self.cfg.window, self.cfg.hop).pow(2).mean(-1, keepdim=True)
        return frame_gain(power, target, max_gain)

    def encode(self, wave: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        """[B,T] -> [B,F,N] features; frame f sees input samples [f*hop - hop, f*hop + hop), scaled by `gain`."""
        x = F.pad(wave.unsqueeze(1), (self.cfg.hop, 0))
        if gain is None:
            return self.enc_act(self.encoder(x).transpose(1, 2))
        filtered = F.conv1d(x, self.encoder.weight, stride=self.cfg.hop).transpose(1, 2)
        return self.enc_act(filtered * gain + self.encoder.bias)

    def masker(self, feats: torch.Tensor, spk: torch.Tensor) -> torch.Tensor:
        """[B,F,N] features and [B,D] embedding -> [B,F,N] mask in (0, 1)."""
        z = self.speaker(spk)
        frames = z.unsqueeze(1).expand(-1, feats.shape[1], -1)
        x = self.fusion_norm(self.fusion_act(self.fusion(torch.cat([self.enc_norm(feats), frames], dim=-1))))
        for k, block in enumerate(self.blocks):
            if self.adapt is not None:
                x = self.adapt[k](x, z)
            x = block(x)
        return torch.sigmoid(self.mask(x))

    def decode(self, feats: torch.Tensor, length: int) -> torch.Tensor:
        """[B,F,N] -> [B,length] by overlap-add; keeps the first `length` samples of the stream."""
        return self.decoder(feats.transpose(1, 2)).squeeze(1)[:, :length]

    def forward(self, wave: torch.Tensor, spk: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2 or spk.dim() != 2:
            raise ValueError("expected wave[B,T] and spk[B,D]")
        length = wave.shape[1]
        pad = (-length) % self.cfg.hop
        if pad:
            wave = F.pad(wave, (0, pad))
        gain = self.frame_gain(wave)
        feats = self.encode(wave, gain)
        masked = feats * self.masker(feats, spk)
        return self.decode(masked if gain is None else masked / gain, length)

    def enhance(self, wave: torch.Tensor, spk: torch.Tensor) -> torch.Tensor:
        """Time-aligned output of the same length as `wave` (flushes one extra hop, drops the lag)."""
        d = self.cfg.output_delay
        return self.forward(F.pad(wave, (0, d)), spk)[:, d:]


def with_frame_level(model: E3Net, dbfs: float | None) -> E3Net:
    """The same weights with per-frame level normalisation at `dbfs` (None: off). The weights fit either way:
    the normalisation has no parameters."""
    from dataclasses import replace

    if model.cfg.frame_level_dbfs == dbfs:
        return model
    out = E3Net(replace(model.cfg, frame_level_dbfs=dbfs))
    out.load_state_dict(model.state_dict())
    return out.train(model.training)
