"""Parameters, MACs per hop and weight bytes of an E3Net config, by arithmetic (torch-free).

The device-side cost model and the bench read these without the model code; `edge_pse.model.stats` counts
the same figures from the modules, and a test keeps the two equal.
"""

from __future__ import annotations

ADAPTATION_LINEARS = {"film": 2, "mul": 1}  # speaker Linears per block (scale, shift) by conditioning


def config_costs(cfg: dict, projected: bool = False) -> dict:
    """Parameters, Linear MACs per hop and weight bytes of an E3Net config (E3NetConfig.to_dict() keys).

    Linear layers of one step: encoder N x window, fusion (N + D) x W, per block two feed-forward
    projections W x F and F x W, eight LSTM gates W x W and the speaker adaptation's D x W Linears (film: 2,
    mul: 1), mask W x N, decoder N x window. The embedding's standardisation folds into the fusion and
    adaptation weights at export: it costs nothing per hop. `projected` (what bundles run, model.step): the
    Linears that see only the speaker (fusion's D x W half, the adaptation's) run once per speaker instead of
    per hop; `projection_params` counts them, and `params` is then the exported step's (what runs per hop).
    """
    n, w, k, f, d = (int(cfg[key]) for key in ("n_filters", "width", "n_blocks", "ff_dim", "spk_dim"))
    win = int(cfg.get("window", 2 * int(cfg.get("hop", 160))))
    adapt = ADAPTATION_LINEARS.get(str(cfg.get("conditioning", "concat")), 0)
    speaker_rows = w * (1 + k * adapt)  # the speaker's Linears' outputs: fusion term, then per block scale/shift
    macs = win * n + (n + d) * w + k * (2 * w * f + 8 * w * w + adapt * d * w) + w * n + n * win
    # 32-bit parameters besides Linear weights, in the step (LSTM biases merged) and in the model (two LSTM biases)
    step_small = 5 * n + 4 * w + k * (2 * f + 12 * w + adapt * w)
    model_small = step_small + k * 4 * w
    params = macs + model_small  # the model's
    if projected:  # the exported step's, per hop: the speaker's Linears and biases are the projection's
        macs -= d * speaker_rows
        step_small -= k * adapt * w
        params = macs + step_small
    return {
        "params": params,
        "macs_per_hop": macs,
        "fp32_bytes": 4 * params,
        "int8_bytes": macs + 4 * step_small,
        "operators": 10 + k * (24 + 2 * adapt),  # Linear, add, activations, LayerNorms of one step (magnitude)
        "projection_params": (d + 1) * speaker_rows if projected else 0,
    }
