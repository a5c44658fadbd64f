"""The streaming step: one 10 ms hop in, one hop out, explicit state. The contract between training,
export and the device runtime (docs/architecture.md).

It carries the offline model's weights in an export-friendly form (docs/toolchain.md): the Conv1d encoder and
ConvTranspose1d decoder become Linear layers on the two halves of the window (no concat or slicing in the
graph), the LSTM is a hand-written cell of Linear gates (nn.LSTM stays float through PT2E), and PReLU is
written as relu(y) - a * relu(-y) (nn.PReLU after a Linear breaks ExecuTorch's XNNPACK lowering).
"""

from __future__ import annotations

import torch
from torch import nn

from edge_pse.model.config import E3NetConfig, StepIO, state_spec
from edge_pse.model.e3net import E3Net, PReLU, frame_gain


def _prelu(act: PReLU) -> PReLU:
    out = PReLU(act.weight.numel())
    out.load_state_dict(act.state_dict())
    return out


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def _layer_norm(norm: nn.LayerNorm) -> nn.LayerNorm:
    out = nn.LayerNorm(norm.normalized_shape, eps=norm.eps)
    out.load_state_dict(norm.state_dict())
    return out


class LSTMCellStep(nn.Module):
    """One LSTM time step as eight Linear gates (input and recurrent part of i, f, g, o)."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        hidden = lstm.hidden_size
        w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
        bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
        gates = []
        for g in range(4):  # PyTorch's gate order: input, forget, cell, output
            rows = slice(g * hidden, (g + 1) * hidden)
            gates.append((_linear(w_ih[rows], bias[rows]), _linear(w_hh[rows], None)))
        self.x_i, self.h_i = gates[0]
        self.x_f, self.h_f = gates[1]
        self.x_g, self.h_g = gates[2]
        self.x_o, self.h_o = gates[3]

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """-> (h, c, o): the new hidden and cell state, and the output gate o (h = o * tanh(c))."""
        i = torch.sigmoid(self.x_i(x) + self.h_i(h))
        f = torch.sigmoid(self.x_f(x) + self.h_f(h))
        g = torch.tanh(self.x_g(x) + self.h_g(h))
        o = torch.sigmoid(self.x_o(x) + self.h_o(h))
        c = f * c + i * g
        return o * torch.tanh(c), c, o


class BlockStep(nn.Module):
    """One LSTM block for one frame, same math as `e3net.LSTMBlock`."""

    def __init__(self, block) -> None:
        super().__init__()
        ff = block.ff
        self.fc1 = _linear(ff.fc1.weight, ff.fc1.bias)
        self.act1 = _prelu(ff.act1)
        self.fc2 = _linear(ff.fc2.weight, ff.fc2.bias)
        self.act2 = _prelu(ff.act2)
        self.ff_norm = _layer_norm(ff.norm)
        self.cell = LSTMCellStep(block.lstm)
        self.lstm_norm = _layer_norm(block.lstm_norm)
        self.out_norm = _layer_norm(block.out_norm)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        y = self.ff_norm(self.act2(self.fc2(self.act1(self.fc1(x)))))
        h, c, o = self.cell(y, h, c)
        return self.out_norm(x + self.lstm_norm(h)), c, o


class AdaptationStep(nn.Module):
    """`SpeakerAdaptation` on the raw embedding: standardisation folded into its Linears, the 1 into the bias."""

    def __init__(self, adapt, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.scale = _folded(adapt.scale.weight, adapt.scale.bias + 1, mean, std)
        self.shift = None if adapt.shift is None else _folded(adapt.shift.weight, adapt.shift.bias, mean, std)

    def forward(self, x: torch.Tensor, spk: torch.Tensor) -> torch.Tensor:
        out = x * self.scale(spk)
        return out if self.shift is None else out + self.shift(spk)


def _folded(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> nn.Linear:
    """Linear(spk) equal to Linear((spk - mean) / std) with the given weight and bias: no extra op per hop."""
    w = weight / std
    return _linear(w, bias - w @ mean)


class E3NetStep(nn.Module):
    """`forward(hop[B,160], spk[B,D], state[B,S]) -> (out[B,160], new_state[B,S])`, the state packed as in
    `io.layout` (config.StepIO).

    Run hop by hop from zero state, it reproduces `E3Net.forward` sample for sample.

    `projected`: the Linears that see only the speaker (the fusion layer's speaker half, FiLM's scales and
    shifts: 123 k of the FiLM tiny's 563 k parameters) leave the per-hop graph. They are one affine map of the
    embedding, `speaker_projection()`, computed once when the speaker is set (the runtime does it in numpy);
    `spk` is then that map's output, `speaker_input(embedding)`, and enters the graph through float slices,
    multiplies and adds only (quant/float_state.py), so int8 never rounds the speaker's scales.
    """

    def __init__(self, model: E3Net, projected: bool = False) -> None:
        super().__init__()
        cfg = model.cfg
        self.cfg = cfg
        self.projected = projected
        hop = cfg.hop
        enc_w = model.encoder.weight.squeeze(1)  # [N, window]
        # encoder: the window is [previous hop ; this hop], so split the kernel instead of concatenating
        self.enc_prev = _linear(enc_w[:, :hop], None)
        self.enc_cur = _linear(enc_w[:, hop:], model.encoder.bias)
        self.enc_act = _prelu(model.enc_act)
        self.enc_norm = _layer_norm(model.enc_norm)
        fw = model.fusion.weight
        if cfg.standardised:  # fold the standardisation into the speaker's half of the fusion layer
            mean, std = model.spk_mean, model.spk_std
        else:
            mean, std = torch.zeros(cfg.spk_dim), torch.ones(cfg.spk_dim)
        spk_part = _folded(fw[:, cfg.n_filters :], model.fusion.bias, mean, std)
        self.fusion_feat = _linear(fw[:, : cfg.n_filters], spk_part.bias)
        self.fusion_spk = _linear(spk_part.weight, None)
        self.adapt = None if model.adapt is None else nn.ModuleList(AdaptationStep(a, mean, std) for a in model.adapt)
        # speaker Linears per block (film: scale and shift, mul: scale)
        self.adapt_linears = 0 if self.adapt is None else 1 + (self.adapt[0].shift is not None)
        weight, bias = self._projection_terms()
        # the map from the embedding to what a projected step takes; not parameters: never in an exported graph
        self._projection = (weight.detach().clone(), bias.detach().clone())
        if projected:  # the speaker's Linears are the projection now, not part of the step
            self.fusion_spk, self.adapt = None, None
        self.io: StepIO = state_spec(cfg, weight.shape[0] if projected else cfg.spk_dim)
        self._bounds = self.io.bounds
        self.fusion_act = _prelu(model.fusion_act)
        self.fusion_norm = _layer_norm(model.fusion_norm)
        self.blocks = nn.ModuleList(BlockStep(b) for b in model.blocks)
        self.mask = _linear(model.mask.weight, model.mask.bias)
        dec_w = model.decoder.weight.squeeze(1).t()  # [window, N]
        # decoder: the frame's first half completes this hop's output, its second half waits for the next
        self.dec_head = _linear(dec_w[:hop], None)
        self.dec_tail = _linear(dec_w[hop:], None)

    def _projection_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The speaker-only Linears stacked as one (weight, bias): fusion's speaker half, then per block the
        adaptation's scale and shift, in the order `forward` and `_adapted` slice them."""
        linears = [self.fusion_spk]
        for a in self.adapt or ():
            linears += [a.scale] + ([a.shift] if a.shift is not None else [])
        weight = torch.cat([lin.weight for lin in linears])
        bias = torch.cat([torch.zeros(lin.out_features) if lin.bias is None else lin.bias for lin in linears])
        return weight, bias

    def speaker_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [P, D], bias [P]): a projected step's `spk` is weight @ embedding + bias."""
        return self._projection

    def speaker_input(self, spk: torch.Tensor) -> torch.Tensor:
        """What this step takes as `spk` for embeddings spk[B, D]: the projection when projected, else spk."""
        if not self.projected:
            return spk
        weight, bias = self._projection
        return spk @ weight.t() + bias

    def _adapted(self, k: int, x: torch.Tensor, spk: torch.Tensor) -> torch.Tensor:
        """Block k's speaker adaptation: its Linears on the embedding, or the projected input's slices of it."""
        if not self.projected:
            return self.adapt[k](x, spk)
        w, per = self.cfg.width, self.adapt_linears
        start = (1 + k * per) * w  # after the fusion's speaker term, in _projection_terms' order
        x = x * spk[:, start : start + w]
        return x if per == 1 else x + spk[:, start + w : start + 2 * w]

    @classmethod
    def from_state_dict(
        cls, cfg: E3NetConfig, state_dict: dict[str, torch.Tensor], projected: bool = False
    ) -> E3NetStep:
        model = E3Net(cfg)
        model.load_state_dict(state_dict)
        return cls(model, projected)

    def initial_state(self, batch: int = 1) -> list[torch.Tensor]:
        return [torch.zeros(batch, *s.shape[1:]) for s in self.io.states]

    def forward(self, hop: torch.Tensor, spk: torch.Tensor, state: torch.Tensor):
        enc_buf, *lstm_state, dec_tail = (state[:, a:b] for a, b in self._bounds)
        limits = self.cfg.frame_gain_limits
        if limits is not None:  # scale the window before the int8 Linears see it; float ops (quant/float_state)
            gain = frame_gain((enc_buf * enc_buf + hop * hop).mean(-1, keepdim=True) * 0.5, *limits)
            feats = self.enc_act(self.enc_prev(enc_buf * gain) + self.enc_cur(hop * gain))
        else:
            feats = self.enc_act(self.enc_prev(enc_buf) + self.enc_cur(hop))
        fused = spk[:, : self.cfg.width] if self.projected else self.fusion_spk(spk)
        x = self.fusion_feat(self.enc_norm(feats)) + fused
        x = self.fusion_norm(self.fusion_act(x))
        new_lstm = []
        for k, block in enumerate(self.blocks):
            if self.adapt_linears:
                x = self._adapted(k, x, spk)
            o, c = lstm_state[2 * k], lstm_state[2 * k + 1]
            # the state carries the output gate, not h: h is rebuilt in float from it, so no state slice feeds
            # an int8 op directly (LiteRT's converter would otherwise make the whole packed input int8)
            x, c, o = block(x, o * torch.tanh(c), c)
            new_lstm += [o, c]
        masked = feats * torch.sigmoid(self.mask(x))
        head, tail = self.dec_head(masked), self.dec_tail(masked)
        if limits is not None:  # back to the input's level; dec_tail is carried at the input's level
            inverse = torch.reciprocal(gain)
            head, tail = head * inverse, tail * inverse
        return head + dec_tail, torch.cat((hop, *new_lstm, tail), dim=-1)


@torch.no_grad()
def run_step(step: E3NetStep, wave: torch.Tensor, spk: torch.Tensor) -> torch.Tensor:
    """Run the step hop by hop over wave[B,T] (T a multiple of the hop); returns the output stream."""
    hop = step.cfg.hop
    if wave.shape[1] % hop:
        raise ValueError(f"length {wave.shape[1]} is not a multiple of the hop ({hop})")
    state = step.initial_state(wave.shape[0])
    outs = []
    for t in range(0, wave.shape[1], hop):
        out, *state = step(wave[:, t : t + hop], spk, *state)
        outs.append(out)
    return torch.cat(outs, dim=1)
