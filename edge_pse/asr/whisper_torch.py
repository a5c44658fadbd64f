"""Whisper tiny.en as a frozen, differentiable PyTorch module, built from the CTranslate2 weights.

Why: the E3Net paper adds an ASR term (multi-task learning) to the enhancement loss so that the student keeps
what a recogniser needs. faster-whisper (CTranslate2) transcribes but gives no gradients, so this is a plain
torch re-implementation of the same network (log-mel front-end, 4+4 pre-norm transformer layers, d=384,
6 heads) loaded from the same model.bin, with every weight frozen and gradients flowing to the waveform.

Short inputs: Whisper was trained on 30 s windows, the audio padded at the end. A clip of T samples gives
T//160 mel frames; the padding after them is set by `tail_seconds`:
- None (default): pad to the full 30 s window, exactly as faster-whisper does (zeros in the normalized
  log-mel). Greedy transcripts then match faster-whisper's (tests/test_asr_loss.py).
- a number: pad only that much, and use only the first ceil(frames/2) positions of the encoder's positional
  embedding. A 2 s clip with a 1 s tail costs 150 encoder positions instead of 1500, which is what makes
  the training loss affordable. Some padding is needed: with none the decoder never sees where the audio
  ends and greedy decoding loops ("even when even when ..."); with a short tail it still does now and then
  on clips cut mid-sentence, so `greedy_tokens` decodes a row that does not end again with the full window.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_pse.asr.ct2_weights import dequantize, read_ct2

SAMPLE_RATE = 16_000
N_FFT, HOP, N_MELS = 400, 160, 80
MAX_FRAMES = 3000  # 30 s: the encoder's positional embedding has 1500 positions after the stride-2 conv


def log_mel(wave: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Whisper's log-mel spectrogram [B, 80, T//160] of wave [B, T], differentiable.

    |X|^2 is taken as re^2 + im^2 (|X| has no gradient at 0); the -8 dB floor is relative to each row's max.
    """
    spec = torch.stft(wave, N_FFT, HOP, window=torch.hann_window(N_FFT, device=wave.device), return_complex=True)
    power = (spec.real.square() + spec.imag.square())[..., :-1]
    mel = torch.clamp(filters @ power, min=1e-10).log10()
    mel = torch.maximum(mel, mel.amax(dim=(-2, -1), keepdim=True) - 8.0)
    return (mel + 4.0) / 4.0


class _Attention(nn.Module):
    """Multi-head attention with CT2's layout: fused qkv (self) or q + fused kv (cross), then the output."""

    def __init__(self, d: int, heads: int, cross: bool) -> None:
        super().__init__()
        self.heads, self.cross = heads, cross
        self.norm = nn.LayerNorm(d)
        self.q = nn.Linear(d, d if cross else 3 * d)
        self.kv = nn.Linear(d, 2 * d) if cross else None
        self.out = nn.Linear(d, d)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def memory(self, enc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of the encoder output (computed once per utterance)."""
        assert self.kv is not None
        k, v = self.kv(enc).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(
        self,
        x: torch.Tensor,
        memory: tuple[torch.Tensor, torch.Tensor] | None = None,
        causal: bool = False,
        cache: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        h = self.norm(x)
        if self.cross:
            assert memory is not None
            q, (k, v) = self._split(self.q(h)), memory
        else:
            q, k, v = (self._split(t) for t in self.q(h).chunk(3, dim=-1))
            if cache is not None:  # incremental decoding: keys/values of the earlier tokens
                if cache:
                    k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
                cache[:] = [k, v]
        # a causal mask is only needed when several queries are computed at once from the first position
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal and q.shape[2] == k.shape[2])
        return x + self.out(y.transpose(1, 2).flatten(2))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, decoder: bool) -> None:
        super().__init__()
        self.self_attn = _Attention(d, heads, cross=False)
        self.cross_attn = _Attention(d, heads, cross=True) if decoder else None
        self.ffn_norm = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(
        self,
        x: torch.Tensor,
        memory: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = self.self_attn(x, causal=self.cross_attn is not None, cache=cache)
        if self.cross_attn is not None:
            x = self.cross_attn(x, memory)
        return x + self.ffn(self.ffn_norm(x))


class WhisperTorch(nn.Module):
    """Frozen Whisper (sizes read from the weights; tiny.en: 4+4 layers, d=384, 6 heads, 80 mels)."""

    def __init__(self, model_dir: str | Path | None = None) -> None:
        super().__init__()
        if model_dir is None:
            from edge_pse.eval.asr import whisper_model_dir

            model_dir = whisper_model_dir()
        model_dir = Path(model_dir)
        w = read_ct2(model_dir / "model.bin")
        self.d = int(w["encoder/conv1/weight"].shape[0])
        heads = int(w["encoder/num_heads"])
        n_enc = sum(1 for k in w if k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/weight"))
        n_dec = sum(1 for k in w if k.startswith("decoder/layer_") and k.endswith("ffn/linear_0/weight"))
        self.conv1 = nn.Conv1d(N_MELS, self.d, 3, padding=1)
        self.conv2 = nn.Conv1d(self.d, self.d, 3, stride=2, padding=1)
        self.encoder = nn.ModuleList(_Block(self.d, heads, decoder=False) for _ in range(n_enc))
        self.enc_norm = nn.LayerNorm(self.d)
        self.decoder = nn.ModuleList(_Block(self.d, heads, decoder=True) for _ in range(n_dec))
        self.dec_norm = nn.LayerNorm(self.d)
        self.embed = nn.Embedding(*w["decoder/embeddings/weight"].shape)
        self.register_buffer("enc_pos", torch.zeros(w["encoder/position_encodings/encodings"].shape))
        self.register_buffer("dec_pos", torch.zeros(w["decoder/position_encodings/encodings"].shape))
        from faster_whisper.feature_extractor import FeatureExtractor

        mel = FeatureExtractor.get_mel_filters(SAMPLE_RATE, N_FFT, n_mels=N_MELS).astype(np.float32)
        self.register_buffer("mel_filters", torch.from_numpy(mel))
        self._load(w)
        self.requires_grad_(False)
        self.eval()

        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config = json.loads((model_dir / "config.json").read_text())
        tok = self.tokenizer.token_to_id
        self.eot = tok("<|endoftext|>")
        # English-only models take no language/task tokens; a multilingual one would need <|en|><|transcribe|>
        multilingual = self.embed.num_embeddings >= 51865
        prompt = ["<|startoftranscript|>"] + (["<|en|>", "<|transcribe|>"] if multilingual else [])
        self.prompt = [tok(t) for t in [*prompt, "<|notimestamps|>"]]
        # greedy decoding may emit text tokens and <|endoftext|> only (as faster-whisper without timestamps)
        suppress = torch.zeros(self.embed.num_embeddings, dtype=torch.bool)
        suppress[self.eot + 1 :] = True
        suppress[[i for i in config.get("suppress_ids", []) if i < len(suppress)]] = True
        self.register_buffer("suppress", suppress)
        self.register_buffer(
            "suppress_begin",
            torch.tensor([i for i in config.get("suppress_ids_begin", []) if i < len(suppress)], dtype=torch.long),
        )

    def _load(self, w: dict[str, np.ndarray]) -> None:
        """Copy the CT2 variables into the modules (names per ctranslate2/specs/whisper_spec.py)."""

        def put(param: torch.Tensor, name: str) -> None:
            value = torch.from_numpy(dequantize(w, name))
            if value.shape != param.shape:
                raise ValueError(f"{name}: shape {tuple(value.shape)} != {tuple(param.shape)}")
            param.data.copy_(value)

        def linear(m: nn.Linear | nn.Conv1d | nn.LayerNorm, name: str) -> None:
            ln = isinstance(m, nn.LayerNorm)
            put(m.weight, f"{name}/{'gamma' if ln else 'weight'}")
            put(m.bias, f"{name}/{'beta' if ln else 'bias'}")

        def attention(a: _Attention, name: str) -> None:
            linear(a.norm, f"{name}/layer_norm")
            linear(a.q, f"{name}/linear_0")
            if a.kv is not None:
                linear(a.kv, f"{name}/linear_1")
            linear(a.out, f"{name}/linear_{2 if a.kv is not None else 1}")

        linear(self.conv1, "encoder/conv1")
        linear(self.conv2, "encoder/conv2")
        put(self.enc_pos, "encoder/position_encodings/encodings")
        put(self.dec_pos, "decoder/position_encodings/encodings")
        put(self.embed.weight, "decoder/embeddings/weight")
        linear(self.enc_norm, "encoder/layer_norm")
        linear(self.dec_norm, "decoder/layer_norm")
        for side, blocks in (("encoder", self.encoder), ("decoder", self.decoder)):
            for i, b in enumerate(blocks):
                attention(b.self_attn, f"{side}/layer_{i}/self_attention")
                if b.cross_attn is not None:
                    attention(b.cross_attn, f"{side}/layer_{i}/attention")
                linear(b.ffn_norm, f"{side}/layer_{i}/ffn/layer_norm")
                linear(b.ffn[0], f"{side}/layer_{i}/ffn/linear_0")
                linear(b.ffn[2], f"{side}/layer_{i}/ffn/linear_1")
        if "decoder/projection/weight" in w and not np.array_equal(
            w["decoder/projection/weight"], w["decoder/embeddings/weight"]
        ):
            raise ValueError("untied output projection is not supported (Whisper ties it to the embeddings)")

    def train(self, mode: bool = True) -> WhisperTorch:
        """Always eval: the model is a fixed judge (no dropout exists, but keep the contract explicit)."""
        return super().train(False)

    # network ----------------------------------------------------------------------------------------------
    def encode(self, wave: torch.Tensor, tail_seconds: float | None = None) -> torch.Tensor:
        """Encoder states [B, P, d] of wave [B, T] (16 kHz): P = 1500 (tail None) or ceil((T/160 + tail)/2)."""
        if wave.dim() == 1:
            wave = wave[None]
        frames = wave.shape[-1] // HOP
        tail = MAX_FRAMES - frames if tail_seconds is None else round(tail_seconds * SAMPLE_RATE / HOP)
        if frames + tail > MAX_FRAMES or tail < 0:
            raise ValueError(f"Whisper takes at most 30 s of audio and padding, got {(frames + tail) / 100:.1f} s")
        if frames < 2:
            raise ValueError("Whisper needs at least 20 ms of audio")
        x = F.pad(log_mel(wave.float(), self.mel_filters), (0, tail))
        x = F.gelu(self.conv2(F.gelu(self.conv1(x)))).transpose(1, 2)
        x = x + self.enc_pos[: x.shape[1]]  # a short window: the first positions only (see the module docstring)
        for block in self.encoder:
            x = block(x)
        return self.enc_norm(x)

    def _memories(self, enc: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [b.cross_attn.memory(enc) for b in self.decoder if b.cross_attn is not None]

    def decode(
        self,
        tokens: torch.Tensor,
        memories: list[tuple[torch.Tensor, torch.Tensor]],
        caches: list[list[torch.Tensor]] | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        """Final hidden states [B, L, d] of tokens [B, L] at positions offset.. (before the vocabulary projection)."""
        x = self.embed(tokens) + self.dec_pos[offset : offset + tokens.shape[1]]
        for i, block in enumerate(self.decoder):
            x = block(x, memories[i], caches[i] if caches is not None else None)
        return self.dec_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.embed.weight.T

    # use --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def greedy_tokens(
        self, wave: torch.Tensor, max_new_tokens: int | None = None, tail_seconds: float | None = None
    ) -> list[list[int]]:
        """Greedy text tokens (no prompt, no <|endoftext|>) for each row of wave [B, T] (or [T]).

        The default budget, 8 + 12 tokens per second, is well above speech rates (~4 tokens/s), so a row that
        does not end within it is a repetition loop: with a short `tail_seconds` those rows are decoded again
        with the full 30 s window (on 2 s LibriSpeech cuts, 1 s tail: 8 of 40 rows; without the fallback mean
        word error vs faster-whisper 1.2, with it 0.2, full window for all 0.04 at 2.4x the time).
        """
        if wave.dim() == 1:
            wave = wave[None]
        if max_new_tokens is None:
            max_new_tokens = 8 + int(12 * wave.shape[-1] / SAMPLE_RATE)
        max_new_tokens = min(max_new_tokens, self.dec_pos.shape[0] - len(self.prompt))
        tokens, finished = self._greedy(wave, max_new_tokens, tail_seconds)
        redo = [i for i, f in enumerate(finished) if not f]
        if redo and tail_seconds is not None:
            for i, row in zip(redo, self._greedy(wave[redo], max_new_tokens, None)[0], strict=True):
                tokens[i] = row
        return tokens

    def _greedy(
        self, wave: torch.Tensor, max_new_tokens: int, tail_seconds: float | None
    ) -> tuple[list[list[int]], list[bool]]:
        """Batched greedy decoding with a self-attention cache; also says which rows reached <|endoftext|>."""
        memories = self._memories(self.encode(wave, tail_seconds))
        caches: list[list[torch.Tensor]] = [[] for _ in self.decoder]
        b = wave.shape[0]
        step_in = torch.tensor(self.prompt, device=wave.device).expand(b, -1)
        out = torch.empty(b, 0, dtype=torch.long, device=wave.device)
        done = torch.zeros(b, dtype=torch.bool, device=wave.device)
        for i in range(max_new_tokens):
            offset = len(self.prompt) + i - 1 if i else 0  # after the prompt, one new token per step
            logits = self.logits(self.decode(step_in, memories, caches, offset)[:, -1])
            logits = logits.masked_fill(self.suppress, -math.inf)
            if i == 0:  # no blank or immediate end at the start (faster-whisper's suppress_blank)
                logits[:, self.suppress_begin] = -math.inf
            nxt = torch.where(done, self.eot, logits.argmax(-1))
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == self.eot
            if done.all():
                break
            step_in = nxt[:, None]
        return [_until(row.tolist(), self.eot) for row in out], done.tolist()

    def transcribe_greedy(self, wave: torch.Tensor | np.ndarray, tail_seconds: float | None = None) -> str:
        """Greedy transcript of one 16 kHz clip (for checking the port against faster-whisper)."""
        wave = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(-1)
        return self.text(self.greedy_tokens(wave, tail_seconds=tail_seconds)[0])

    def text(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True).strip()

    def encode_text(self, text: str) -> list[int]:
        """Text tokens of a reference transcript (Whisper's convention: a leading space)."""
        return self.tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids

    def token_loss(
        self, wave: torch.Tensor, tokens: Sequence[Sequence[int]], tail_seconds: float | None = None
    ) -> torch.Tensor:
        """Teacher-forced cross-entropy of each row's text tokens (+ <|endoftext|>) given wave [B, T].

        Per row, the mean over its own tokens (padding ignored), then the mean over the batch: short and long
        transcripts weigh the same. An empty token list still scores <|endoftext|> (the clip has no words).
        """
        if wave.dim() == 1:
            wave = wave[None]
        if len(tokens) != wave.shape[0]:
            raise ValueError(f"{len(tokens)} token sequences for {wave.shape[0]} waveforms")
        limit = self.dec_pos.shape[0] - len(self.prompt)
        rows = [list(t)[:limit] for t in tokens]
        n = max(len(r) for r in rows) + 1
        inp = torch.full((len(rows), len(self.prompt) - 1 + n), self.eot, dtype=torch.long, device=wave.device)
        target = torch.full((len(rows), n), -100, dtype=torch.long, device=wave.device)
        for i, r in enumerate(rows):
            inp[i, : len(self.prompt) + len(r)] = torch.tensor(self.prompt + r)
            target[i, : len(r) + 1] = torch.tensor([*r, self.eot])
        hidden = self.decode(inp, self._memories(self.encode(wave, tail_seconds)))[:, len(self.prompt) - 1 :]
        ce = F.cross_entropy(self.logits(hidden).transpose(1, 2), target, ignore_index=-100, reduction="none")
        return (ce.sum(1) / (target != -100).sum(1)).mean()


def _until(row: list[int], end: int) -> list[int]:
    return row[: row.index(end)] if end in row else row
