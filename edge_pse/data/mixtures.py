"""On-the-fly PSE training examples: (mixture, clean target, enrollment of the same speaker, metadata).

Conditions: `noise` (target + noise), `interferer` (target + another talker), `both`, `absent`
(no target: the model should output silence) and `reverberant` (target in a measured or simulated room, plus
noise and sometimes a talker). Example i of a split is a pure function of (seed, i): the same seed gives the
same data on any machine and after a resume.

The enrollment clip comes from other audio of the same speaker: another utterance, or (with one utterance
per speaker, as in ../shared/data) a segment of the utterance that does not overlap the target segment.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soxr
from scipy import signal

from edge_pse.data.sources import SAMPLE_RATE, Sources, Speaker, audio_files, load_audio, load_sources
from edge_pse.data.synth import below, procedural_noise, rms, simulated_rir
from edge_pse.errors import EdgePseError

CONDITIONS = ("noise", "interferer", "both", "absent", "reverberant")


@dataclass(frozen=True)
class MixtureConfig:
    seconds: float = 4.0
    enroll_seconds: float = 4.0
    snr_db: tuple[float, float] = (-5.0, 20.0)
    sir_db: tuple[float, float] = (-5.0, 10.0)
    level_dbfs: tuple[float, float] = (-35.0, -15.0)
    # probability of each condition, in CONDITIONS order
    weights: tuple[float, ...] = (0.25, 0.2, 0.2, 0.1, 0.25)
    procedural_noise_prob: float = 0.3  # else a recorded noise file
    simulated_room_prob: float = 0.5  # else a measured RIR (when the split has any)
    early_ms: float = 50.0  # the reverberant target keeps direct sound + this much of the room
    # speaker variety (training): speed-perturbed copies of every speaker as new speakers (factors; a copy is
    # never paired with its own original), and enrollment crops per utterance end (head and tail each)
    pseudo_speakers: tuple[float, ...] = ()
    enroll_crops: int = 1
    # dual-target two-talker pairs (MixtureDataset.pair): symmetric SIR, optional noise and room, and partial
    # absence (the target silent over the first or last part of the clip, the other talker going on)
    pair_sir_db: tuple[float, float] = (-5.0, 5.0)
    pair_noise_prob: float = 0.0
    pair_reverb_prob: float = 0.0
    partial_absence_prob: float = 0.0
    # the target talks in turns inside the clip (a late start and/or 1-2 pauses of 0.25-0.8 s) while the other
    # voices go on: onsets and re-entries become a normal part of training, not only the clip's first frame
    turns_prob: float = 0.0
    # a random microphone (high-pass, band limit half the time, one +-6 dB resonance) on the mixture and on its
    # reference alike: the model must not undo the user's microphone, only remove what is not their voice
    mic_prob: float = 0.0

    def __post_init__(self) -> None:
        if len(self.weights) != len(CONDITIONS) or min(self.weights) < 0 or sum(self.weights) <= 0:
            raise ValueError(f"weights must be {len(CONDITIONS)} non-negative numbers, one per condition")
        if any(not 0.5 <= f <= 2.0 or f == 1.0 for f in self.pseudo_speakers):
            raise ValueError("pseudo-speaker factors must be within [0.5, 2] and not 1")
        if self.enroll_crops < 1:
            raise ValueError("enroll_crops must be >= 1")


@dataclass
class Example:
    mixture: np.ndarray  # float32 [T]
    target: np.ndarray  # float32 [T], zeros when the target is absent
    enroll: np.ndarray  # float32 enrollment clip of the target speaker
    embedding: np.ndarray  # float32 [256] d-vector of `enroll`
    condition: str
    meta: dict = field(default_factory=dict)
    # another speaker's d-vector for the swap test: the interferer's when it has one, else another speaker's
    other_embedding: np.ndarray | None = None


def _window(length: int, n: int, rng: np.random.Generator) -> int:
    return int(rng.integers(0, length - n + 1)) if length > n else 0


def _crop(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random n-sample window; loops a short clip."""
    if len(x) < n:
        x = np.tile(x, int(np.ceil(n / max(len(x), 1))) + 1)
    start = _window(len(x), n, rng)
    return x[start : start + n]


def _reverb(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    return signal.fftconvolve(x, rir)[: len(x)].astype(np.float32)


def speed_perturbed(sources: Sources, factors: tuple[float, ...]) -> tuple[Sources, list[int]]:
    """Sources plus a copy of every speaker per factor (resampled: pitch and tempo x factor, a new voice to the
    d-vector at 0.85/1.15), and each speaker's original index, so that a copy is never paired with itself."""
    speakers, base = list(sources.speakers), list(range(len(sources.speakers)))
    for f in factors:
        for s, spk in enumerate(sources.speakers):
            utts = [soxr.resample(u, SAMPLE_RATE, SAMPLE_RATE / f).astype(np.float32) for u in spk.utterances]
            speakers.append(Speaker(f"{spk.id}@{f:g}", utts))
            base.append(s)
    return Sources(speakers, sources.noises, sources.rirs), base


TURN_RAMP = 160  # 10 ms fades at the edges of a turn (a hard cut inside a word would be a click)


def _turns(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """x talking in turns: half the time a late start (after 10-50 % of the clip), then one or two pauses of
    0.25-0.8 s; at least a quarter of the clip keeps talking."""
    n = len(x)
    gate = np.ones(n, np.float32)
    lead = int(rng.uniform(0.1, 0.5) * n) if rng.random() < 0.5 else 0
    gate[:lead] = 0.0
    for _ in range(int(rng.integers(1, 3))):
        length = int(rng.uniform(0.25, 0.8) * SAMPLE_RATE)
        start = int(rng.integers(lead, max(lead + 1, n - length)))
        trial = gate.copy()
        trial[start : start + length] = 0.0
        if trial.mean() >= 0.25:
            gate = trial
    ramp = np.hanning(2 * TURN_RAMP + 1)[: TURN_RAMP + 1]
    edges = np.pad(gate, TURN_RAMP, mode="edge")  # a clip that starts or ends talking is not faded there
    gate = np.convolve(edges, ramp / ramp.sum(), mode="same")[TURN_RAMP:-TURN_RAMP].astype(np.float32)
    edges = int(np.count_nonzero(np.diff((gate > 0.5).astype(np.int8)) == 1)) + int(gate[0] > 0.5)
    return x * gate, f"turns-{edges}"


def _microphone(rng: np.random.Generator) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A random microphone response: a 2nd-order high-pass at 50-250 Hz, half the time a 4th-order low-pass at
    3.4-7.5 kHz (a band-limited capsule or codec), and a resonance of -6..+6 dB at 300-4000 Hz (Q 0.7-2)."""
    hp = float(rng.uniform(50, 250))
    sections = [signal.butter(2, hp, "highpass", fs=SAMPLE_RATE, output="sos")]
    lp = float(rng.uniform(3400, 7500)) if rng.random() < 0.5 else None
    if lp is not None:
        sections.append(signal.butter(4, lp, "lowpass", fs=SAMPLE_RATE, output="sos"))
    f0, q, gain_db = float(rng.uniform(300, 4000)), float(rng.uniform(0.7, 2.0)), float(rng.uniform(-6, 6))
    b, a = signal.iirpeak(f0, q, fs=SAMPLE_RATE)  # unit gain at f0: x + (g - 1) * band is a peak of gain g there

    def apply(x: np.ndarray) -> np.ndarray:
        y = signal.sosfilt(np.concatenate(sections), x)
        return (y + (10 ** (gain_db / 20) - 1) * signal.lfilter(b, a, y)).astype(np.float32)

    return apply, f"hp{hp:.0f}" + (f"-lp{lp:.0f}" if lp else "") + f"-peak{f0:.0f}@{gain_db:+.1f}dB"


def _enroll_meta(option: tuple[tuple[int, ...], int]) -> list:
    """An enrollment clip in an example's metadata: [utterance, start] of one utterance, or [[u1, u2, ...], start]
    of joined ones."""
    utts, start = option
    return [utts[0] if len(utts) == 1 else list(utts), start]


def _partial_absence(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Silence the first or last 25-75 % of x: the target stops or starts talking inside the clip."""
    k = int(len(x) * rng.uniform(0.25, 0.75))
    x = x.copy()
    if rng.random() < 0.5:
        x[:k] = 0.0
        return x, f"silent-head-{k}"
    x[k:] = 0.0
    return x, f"silent-tail-{k}"


class MixtureDataset:
    """Examples of one split of a data root; `ds[i]` is deterministic in (seed, i)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        seed: int = 0,
        cfg: MixtureConfig | None = None,
        length: int = 1_000_000,
        conditions: tuple[str, ...] | None = None,
        max_speakers: int | None = None,
        cache_dir: str | Path | None = None,
        sources: Sources | None = None,
        corpora: tuple[str, ...] | None = None,
    ) -> None:
        self.cfg = cfg or MixtureConfig()
        self.split, self.seed, self.length = split, seed, length
        self.sources = sources or load_sources(root, split, max_speakers, corpora)
        self.base = list(range(len(self.sources.speakers)))  # each speaker's original (pseudo-speakers)
        if self.cfg.pseudo_speakers:
            self.sources, self.base = speed_perturbed(self.sources, self.cfg.pseudo_speakers)
        if conditions is not None:
            unknown = set(conditions) - set(CONDITIONS)
            if unknown:
                raise ValueError(f"unknown conditions {sorted(unknown)}; choose from {CONDITIONS}")
        self.conditions = conditions
        self.n = int(self.cfg.seconds * SAMPLE_RATE)
        self.n_enroll = int(self.cfg.enroll_seconds * SAMPLE_RATE)
        self._options = self._enroll_options()
        # speakers with too little audio to enroll still serve as interferers
        self.targets = [s for s, opts in enumerate(self._options) if opts]
        if not self.targets:
            raise ValueError(f"no speaker in the {split} split has {self.cfg.enroll_seconds} s to enroll with")
        self._embeddings = self._enroll_embeddings(cache_dir)

    def __len__(self) -> int:
        return self.length

    # enrollment: per speaker, a few fixed clips whose d-vectors are computed once and cached
    def _enroll_options(self) -> list[list[tuple[tuple[int, ...], int]]]:
        """Per speaker: (utterance indices, start sample) of each enrollment clip.

        A speaker with one utterance enrolls from its head and tail (shifted by 0.5 s per extra crop), so that
        what is left of it serves as target speech. A speaker with several utterances enrolls, like a real user,
        from other recordings than the target's: a few of its utterances joined until they fill the clip
        (2 x enroll_crops clips from evenly spaced first utterances, always leaving one utterance out for the
        target). Short read sentences (speechocean762's median is 3.7 s) then enroll too, and the number of
        d-vectors grows with speakers, not with utterances.
        """
        options = []
        shift = SAMPLE_RATE // 2
        for spk in self.sources.speakers:
            n_utts = len(spk.utterances)
            opts: list[tuple[tuple[int, ...], int]] = []
            if n_utts == 1:
                utt = spk.utterances[0]
                for c in range(self.cfg.enroll_crops):
                    # the utterance must hold an enrollment clip and at least half a target segment
                    if len(utt) >= self.n_enroll + c * shift + self.n // 2:
                        opts += [((0,), c * shift), ((0,), len(utt) - self.n_enroll - c * shift)]
            else:
                count = min(2 * self.cfg.enroll_crops, n_utts)
                for k in range(count):
                    first, joined, total = k * n_utts // count, [], 0
                    while total < self.n_enroll and len(joined) < n_utts - 1:
                        u = (first + len(joined)) % n_utts
                        joined.append(u)
                        total += len(spk.utterances[u])
                    if total >= self.n_enroll:
                        opts.append((tuple(joined), 0))
            options.append(opts)
        return options

    def _enroll_clip(self, s: int, o: int) -> np.ndarray:
        utts, start = self._options[s][o]
        spk = self.sources.speakers[s]
        if len(utts) == 1:
            return spk.utterances[utts[0]][start : start + self.n_enroll]
        # a copy: a view would keep the whole joined audio alive
        return np.concatenate([spk.utterances[u] for u in utts])[start : start + self.n_enroll].copy()

    def _enroll_embeddings(self, cache_dir: str | Path | None) -> list[np.ndarray]:
        from edge_pse.enroll.dvector import EMBED_RECIPE

        key = hashlib.sha1(EMBED_RECIPE.encode())  # a new embedding recipe must not reuse old vectors
        for s, spk in enumerate(self.sources.speakers):
            key.update(spk.id.encode())
            for o in range(len(self._options[s])):
                key.update(self._enroll_clip(s, o)[::997].tobytes())
        cache = Path(cache_dir or Path.home() / ".cache" / "edge-pse") / f"dvectors-{key.hexdigest()[:16]}.npz"
        if cache.exists():
            with np.load(cache) as z:
                flat = z["embeddings"]
        else:
            from edge_pse.enroll.dvector import embed_many

            clips = _EnrollClips(self)  # made a chunk at a time: all of them at once would be GBs
            flat = embed_many(clips, progress=f"d-vectors ({self.split}, {len(clips)} clips)")
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")  # DDP ranks may compute it at the same time
            np.savez(tmp, embeddings=flat)
            tmp.replace(cache)
        out, i = [], 0
        for opts in self._options:
            out.append(flat[i : i + len(opts)])
            i += len(opts)
        return out

    def _target_segment(self, s: int, o: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
        """Target speech of speaker s that does not overlap enrollment clip o: (segment, utterance, start)."""
        spk = self.sources.speakers[s]
        utts_enr, start_enr = self._options[s][o]
        u_enr = utts_enr[0]
        others = [u for u in range(len(spk.utterances)) if u not in utts_enr]
        if others:
            u = others[int(rng.integers(len(others)))]
            lo, hi = 0, len(spk.utterances[u])
        else:  # the longer part of the utterance beside the enrollment clip
            u = u_enr
            after = len(spk.utterances[u]) - (start_enr + self.n_enroll)
            lo, hi = (start_enr + self.n_enroll, len(spk.utterances[u])) if after >= start_enr else (0, start_enr)
        start = lo + _window(hi - lo, self.n, rng)
        seg = spk.utterances[u][start : min(hi, start + self.n)]
        return np.pad(seg, (0, self.n - len(seg))), u, start

    def _other(self, s: int, candidates, rng: np.random.Generator) -> int:
        """A random speaker among `candidates` that is neither s nor a speed-perturbed copy of s's original
        (candidates are walked from s + 1 on, so that without pseudo-speakers the draw is the original one)."""
        order = sorted(candidates, key=lambda c: (c - s - 1) % len(self.sources.speakers))
        pool = [c for c in order if self.base[c] != self.base[s]]
        return int(pool[int(rng.integers(len(pool)))])

    def _noise(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        return self._noise_of_length(self.n, rng)

    def _noise_of_length(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        if not self.sources.noises or rng.random() < self.cfg.procedural_noise_prob:
            return procedural_noise(n, rng), "procedural"
        k = int(rng.integers(len(self.sources.noises)))
        x = _crop(self.sources.noises[k], n, rng)
        if rms(x) < 1e-4:  # a silent stretch of a recording: fall back to procedural noise
            return procedural_noise(n, rng), "procedural"
        return x, f"noise#{k}"

    def _rir(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        if not self.sources.rirs or rng.random() < self.cfg.simulated_room_prob:
            return simulated_rir(rng), "simulated"
        k = int(rng.integers(len(self.sources.rirs)))
        return self.sources.rirs[k], f"rir#{k}"

    def __getitem__(self, i: int) -> Example:
        if not 0 <= i < self.length:
            raise IndexError(i)
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, i])
        if self.conditions:
            condition = self.conditions[int(rng.integers(len(self.conditions)))]
        else:
            condition = CONDITIONS[int(rng.choice(len(CONDITIONS), p=np.array(cfg.weights) / sum(cfg.weights)))]
        n_spk = len(self.sources.speakers)
        s = self.targets[int(rng.integers(len(self.targets)))]
        o = int(rng.integers(len(self._options[s])))
        target, utt, start = self._target_segment(s, o, rng)
        meta: dict = {
            "speaker": self.sources.speakers[s].id,
            "target": [utt, start],
            "enroll": _enroll_meta(self._options[s][o]),
        }
        target = target.astype(np.float32)
        target *= 10 ** (rng.uniform(*cfg.level_dbfs) / 20) / rms(target)
        if condition != "absent" and cfg.partial_absence_prob and rng.random() < cfg.partial_absence_prob:
            target, meta["absence"] = _partial_absence(target, rng)  # levels stay set by the whole clip
        elif condition != "absent" and cfg.turns_prob and rng.random() < cfg.turns_prob:
            target, meta["talk"] = _turns(target, rng)
        ref = target

        reverberant = condition == "reverberant"
        with_talker = condition in ("interferer", "both") or (
            condition in ("absent", "reverberant") and rng.random() < 0.5
        )
        with_noise = condition in ("noise", "both", "reverberant") or (condition == "absent" and not with_talker)
        if reverberant:
            rir, meta["room"] = self._rir(rng)
            early = rir[: int(cfg.early_ms * SAMPLE_RATE / 1000)]
            ref = _reverb(target, early)
            target = _reverb(target, rir)
        mixture = np.zeros_like(target) if condition == "absent" else target.copy()
        if with_talker:
            s2 = self._other(s, range(n_spk), rng)
            spk2 = self.sources.speakers[s2]
            talker = _crop(spk2.utterances[int(rng.integers(len(spk2.utterances)))], self.n, rng)
            if reverberant:
                talker = _reverb(talker, self._rir(rng)[0])
            sir = rng.uniform(*cfg.sir_db)
            mixture += below(talker, rms(target), sir)
            meta.update(interferer=spk2.id, sir_db=round(float(sir), 2))
        if with_noise:
            noise, meta["noise"] = self._noise(rng)
            snr = rng.uniform(*cfg.snr_db)
            mixture += below(noise, rms(target), snr)
            meta["snr_db"] = round(float(snr), 2)
        if condition == "absent":
            ref = np.zeros_like(ref)
        if cfg.mic_prob and rng.random() < cfg.mic_prob:
            mic, meta["mic"] = _microphone(rng)
            mixture, ref = mic(mixture), mic(ref)
        peak = float(np.max(np.abs(mixture)))
        if peak > 0.95:  # keep the mixture in range; the reference scales with it
            mixture, ref = mixture * (0.95 / peak), ref * (0.95 / peak)
        enroll = self._enroll_clip(s, o)
        return Example(
            mixture.astype(np.float32),
            ref.astype(np.float32),
            enroll,
            self._embeddings[s][o].astype(np.float32),
            condition,
            meta,
            self._swap_embedding(s, s2 if with_talker else None),
        )

    def _swap_embedding(self, s: int, other: int | None) -> np.ndarray:
        """The d-vector a swap test feeds instead of the target's: the other talker's (first enrollment clip) when
        it can enroll, else the next enrollable speaker's. Draws no random numbers: examples stay as they were."""
        if other is None or not self._options[other]:
            k = self.targets.index(s) if s in self.targets else 0
            other = next(t for t in self.targets[k + 1 :] + self.targets[:k] if self.base[t] != self.base[s])
        return self._embeddings[other][0].astype(np.float32)

    def stream(self, i: int, seconds: float = 60.0) -> Example:
        """A long stream: the target talks in turns of 2-8 s with pauses of 1-6 s while another talker never
        stops (SIR 0 dB over the target's turns) over low noise (SNR 15-25 dB). The case where streaming PSE
        ports fail: the model must keep silence in the pauses instead of latching onto the voice that goes on."""
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, i, 3])
        n = int(seconds * SAMPLE_RATE)
        s = self.targets[int(rng.integers(len(self.targets)))]
        o = int(rng.integers(len(self._options[s])))
        s2 = self._other(s, range(len(self.sources.speakers)), rng)
        target = np.zeros(n, np.float32)
        t, turns = int(rng.uniform(0.5, 3.0) * SAMPLE_RATE), []
        while t < n:
            seg, _, _ = self._target_segment(s, o, rng)
            length = min(n - t, int(rng.uniform(2.0, 8.0) * SAMPLE_RATE), len(seg))
            target[t : t + length] = seg[:length]
            turns.append([t, t + length])
            t += length + int(rng.uniform(1.0, 6.0) * SAMPLE_RATE)
        active = np.concatenate([target[a:b] for a, b in turns])
        gain = 10 ** (rng.uniform(*cfg.level_dbfs) / 20) / rms(active)
        target *= gain
        talker_utts = self.sources.speakers[s2].utterances
        talker = _crop(talker_utts[int(rng.integers(len(talker_utts)))], n, rng)  # loops its utterance
        talker *= rms(active * gain) / rms(talker)
        noise, noise_name = self._noise_of_length(n, rng)
        snr = rng.uniform(15.0, 25.0)
        mixture = target + talker + below(noise, rms(active * gain), snr)
        scale = min(1.0, 0.95 / max(float(np.max(np.abs(mixture))), 1e-9))
        meta = {
            "speaker": self.sources.speakers[s].id,
            "interferer": self.sources.speakers[s2].id,
            "turns": turns,
            "noise": noise_name,
            "snr_db": round(float(snr), 2),
            "sir_db": 0.0,
        }
        return Example(
            (mixture * scale).astype(np.float32),
            (target * scale).astype(np.float32),
            self._enroll_clip(s, o),
            self._embeddings[s][o].astype(np.float32),
            "long-stream",
            meta,
            self._swap_embedding(s, s2),
        )

    def pair(self, i: int) -> tuple[Example, Example]:
        """A dual-target pair: one mixture of two enrolled talkers A and B, once with A's enrollment and A as the
        target, once with B's. The same input must give two different outputs, so passing both voices (the
        hedge a speaker-blind model settles on) is wrong for both rows. Deterministic in (seed, i), apart from
        __getitem__'s examples (another stream of the same seed)."""
        if not 0 <= i < self.length:
            raise IndexError(i)
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, i, 2])
        a = self.targets[int(rng.integers(len(self.targets)))]
        b = self._other(a, self.targets, rng)
        level = rng.uniform(*cfg.level_dbfs)
        sir = rng.uniform(*cfg.pair_sir_db)  # A over B, symmetric: loudness says nothing about the target
        reverberant = rng.random() < cfg.pair_reverb_prob
        room = self._rir(rng) if reverberant else None
        dry, wet, refs, metas = [], [], [], []
        for s, gain_db in ((a, level), (b, level - sir)):
            o = int(rng.integers(len(self._options[s])))
            seg, utt, start = self._target_segment(s, o, rng)
            seg = seg.astype(np.float32) * (10 ** (gain_db / 20) / rms(seg))
            meta = {
                "speaker": self.sources.speakers[s].id,
                "target": [utt, start],
                "enroll": _enroll_meta(self._options[s][o]),
            }
            if cfg.partial_absence_prob and rng.random() < cfg.partial_absence_prob:
                seg, meta["absence"] = _partial_absence(seg, rng)
            elif cfg.turns_prob and rng.random() < cfg.turns_prob:
                seg, meta["talk"] = _turns(seg, rng)
            ref = seg
            if room is not None:  # one room, one impulse response per talker position
                rir = room[0] if s == a else self._rir(rng)[0]
                ref = _reverb(seg, rir[: int(cfg.early_ms * SAMPLE_RATE / 1000)])
                seg = _reverb(seg, rir)
                meta["room"] = room[1]
            dry.append((s, o))
            wet.append(seg)
            refs.append(ref)
            metas.append(meta)
        mixture = wet[0] + wet[1]
        extra: dict = {}
        if rng.random() < cfg.pair_noise_prob:
            noise, extra["noise"] = self._noise(rng)
            snr = rng.uniform(*cfg.snr_db)  # against the louder talker
            mixture = mixture + below(noise, max(rms(wet[0]), rms(wet[1])), snr)
            extra["snr_db"] = round(float(snr), 2)
        if cfg.mic_prob and rng.random() < cfg.mic_prob:
            mic, extra["mic"] = _microphone(rng)
            mixture, refs = mic(mixture), [mic(r) for r in refs]
        scale = min(1.0, 0.95 / max(float(np.max(np.abs(mixture))), 1e-9))
        mixture = (mixture * scale).astype(np.float32)
        out = []
        for k, ((s, o), ref, meta) in enumerate(zip(dry, refs, metas, strict=True)):
            other = metas[1 - k]["speaker"]
            sir_k = sir if k == 0 else -sir
            meta |= extra | {"interferer": other, "sir_db": round(float(sir_k), 2), "pair": i}
            cond = "interferer" if "noise" not in extra else "both"
            target = (ref * scale).astype(np.float32)
            if not np.any(target):
                cond = "absent"
            other_emb = self._embeddings[dry[1 - k][0]][dry[1 - k][1]].astype(np.float32)
            emb = self._embeddings[s][o].astype(np.float32)
            out.append(Example(mixture, target, self._enroll_clip(s, o), emb, cond, meta, other_emb))
        return out[0], out[1]


class _EnrollClips:
    """Every enrollment clip of a dataset, in option order, made when sliced (embed_many takes chunks)."""

    def __init__(self, ds: MixtureDataset) -> None:
        self.ds = ds
        self.pairs = [(s, o) for s in range(len(ds._options)) for o in range(len(ds._options[s]))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, chunk: slice) -> list[np.ndarray]:
        return [self.ds._enroll_clip(s, o) for s, o in self.pairs[chunk]]


class RecordingDataset(MixtureDataset):
    """Real noisy recordings with no clean reference (`distill --noisy-only DIR`, the paper's KD + MTL data).

    DIR holds one folder per speaker (DIR/SPK/.../*.flac|wav): each recording is the target speaker, with
    whatever noise and other voices the room had. An example is a crop of one recording as the mixture and
    an enrollment clip made exactly as MixtureDataset makes it (other recordings of that speaker joined, or the
    other end of a speaker's only recording). There is no target: `target` is zeros, the loss uses the
    teacher's output only (kd_weight 1) and ASR pseudo-labels come from that output.
    """

    def __init__(self, folder: str | Path, seed: int = 0, cfg: MixtureConfig | None = None, **kw) -> None:
        super().__init__(folder, "train", seed, cfg, sources=load_recordings(folder), **kw)

    def __getitem__(self, i: int) -> Example:
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        s = self.targets[int(rng.integers(len(self.targets)))]
        o = int(rng.integers(len(self._options[s])))
        mixture, utt, start = self._target_segment(s, o, rng)
        mixture = mixture * (10 ** (rng.uniform(*self.cfg.level_dbfs) / 20) / rms(mixture))
        mixture *= min(1.0, 0.95 / max(float(np.max(np.abs(mixture))), 1e-9))
        meta = {
            "speaker": self.sources.speakers[s].id,
            "recording": [utt, start],
            "enroll": _enroll_meta(self._options[s][o]),
        }
        return Example(
            mixture.astype(np.float32),
            np.zeros_like(mixture, dtype=np.float32),
            self._enroll_clip(s, o),
            self._embeddings[s][o].astype(np.float32),
            "recorded",
            meta,
        )


def load_recordings(folder: str | Path) -> Sources:
    """Speakers of a folder of noisy recordings: one sub-folder per speaker (no noise or room sources)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgePseError(f"--noisy-only: {folder} is not a folder")
    speakers = []
    for spk_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = audio_files(spk_dir)
        if files:
            speakers.append(Speaker(spk_dir.name, [load_audio(p) for p in files]))
    if not speakers:
        raise EdgePseError(f"--noisy-only: {folder} has no speaker folders with audio (expected DIR/SPK/*.flac|wav)")
    return Sources(speakers, [], [])
