"""Plant known faults in a copy of the project and report which the test suite catches.

    python -m tests.mutants [--only NAME ...] [--keep]

Each mutant replaces one exact piece of source in a temporary copy of the checkout (never in the checkout
itself), then runs the tests that should catch it with the copy first on PYTHONPATH. A mutant is "caught"
when those tests fail. A planted fault the suite does not catch means a test is missing or too weak: the
table says which. docs/testing.md explains how to add a mutant.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "campaign", "runs", "artifacts", "*.egg-info")


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # file relative to the repo
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest arguments that should catch it


MUTANTS = (
    Mutant(
        "speaker cut out of E3Net",
        "edge_pse/model/e3net.py",
        "        z = self.speaker(spk)\n",
        "        z = self.speaker(torch.zeros_like(spk))\n",
        ("tests/test_model.py",),
    ),
    Mutant(
        "the step ignores the speaker's FiLM",
        "edge_pse/model/step.py",
        "            return self.adapt[k](x, spk)\n",
        "            return self.adapt[k](x, torch.zeros_like(spk))\n",
        ("tests/test_model.py",),
    ),
    Mutant(
        "a projected step (what the bundles run) ignores the speaker's FiLM scales",
        "edge_pse/model/step.py",
        "        x = x * spk[:, start : start + w]\n",
        "        x = x * torch.ones_like(spk[:, start : start + w])\n",
        ("tests/test_model.py", "-k", "projected"),
    ),
    Mutant(
        "training examples carry another speaker's d-vector",
        "edge_pse/data/mixtures.py",
        "            self._embeddings[s][o].astype(np.float32),\n            condition,",
        "            self._swap_embedding(s, None),\n            condition,",
        ("tests/test_data.py",),
    ),
    Mutant(
        "dual-target pairs give each row the other talker's target",
        "edge_pse/data/mixtures.py",
        "            target = (ref * scale).astype(np.float32)\n",
        "            target = (refs[1 - k] * scale).astype(np.float32)\n",
        ("tests/test_data.py",),
    ),
    Mutant(
        "edge-pse run ignores --speaker",
        "edge_pse/runtime/backends/base.py",
        "        self._spk[0] = spk\n",
        "        self._spk[0] = 1.0 / np.sqrt(self._spk.shape[1])\n",
        ("tests/test_run.py", "-k", "reaches"),
    ),
    Mutant(
        "the mask is ignored",
        "edge_pse/model/e3net.py",
        "        masked = feats * self.masker(feats, spk)\n",
        "        masked = feats\n",
        ("tests/test_shipped.py", "-k", "improves"),
    ),
    Mutant(
        "LiteRT does not carry the state between hops",
        "edge_pse/runtime/backends/litert.py",
        "        put(self._state_in, get(self._state_out))\n",
        "        pass\n",
        ("tests/test_shipped.py", "-k", "improves"),
    ),
    Mutant(
        "int8 scale ignored when the speaker is quantized",
        "edge_pse/runtime/backends/base.py",
        '        np.clip(np.rint(x / t.scale) + t.zero_point, info.min, info.max, out=dst, casting="unsafe")\n',
        '        np.clip(np.rint(x) + t.zero_point, info.min, info.max, out=dst, casting="unsafe")\n',
        ("tests/test_bundle.py", "-k", "int8_inputs"),
    ),
    Mutant(
        "the bundle's sha256 check skipped",
        "edge_pse/bundle.py",
        "            if sha256_file(fpath) != entry.sha256:\n",
        "            if False:\n",
        ("tests/test_bundle.py",),
    ),
    Mutant(
        "the streamed file run drops the lag compensation",
        "edge_pse/runtime/files.py",
        "        sink = BlockSink(writer.write, hop, delay=transport.lag_hops * hop)\n",
        "        sink = BlockSink(writer.write, hop, delay=0)\n",
        ("tests/test_run.py", "-k", "streamed"),
    ),
    Mutant(
        "audio frames on the device link are not authenticated",
        "firmware_host/protocol.py",
        "        if not hmac.compare_digest(tag, self._tag(self._recv_key, self._recv_seq, header + payload)):\n",
        "        if t not in (T.HOP, T.OUT) and not hmac.compare_digest(\n"
        "            tag, self._tag(self._recv_key, self._recv_seq, header + payload)\n        ):\n",
        ("tests/test_protocol.py", "-k", "channel_refuses"),
    ),
    Mutant(
        "a remote run takes its input's error for a dropped link",
        "firmware_host/client.py",
        "                            hop = None if exhausted else _next_hop(hops)\n",
        "                            hop = None if exhausted else next(hops, None)\n",
        ("tests/test_agent.py", "-k", "input_error"),
    ),
    Mutant(
        "the onset share is measured after the window instead of in it",
        "edge_pse/eval/metrics.py",
        "            r, e = ref[t : t + n], est[t : t + n]\n",
        "            r, e = ref[t : t + n], est[min(t + n, ref.size - n) : min(t + n, ref.size - n) + n]\n",
        ("tests/test_metrics.py", "-k", "onset"),
    ),
    Mutant(
        "the target may come from a recording the enrollment was joined from",
        "edge_pse/data/mixtures.py",
        "        others = [u for u in range(len(spk.utterances)) if u not in utts_enr]\n",
        "        others = [u for u in range(len(spk.utterances)) if u != u_enr]\n",
        ("tests/test_data.py", "-k", "joined"),
    ),
    Mutant(
        "batched d-vectors average the partials of the wrong clip",
        "edge_pse/enroll/dvector.py",
        "            owner += [k] * len(mel_slices)\n",
        "            owner += [min(k, 1)] * len(mel_slices)\n",
        ("tests/test_enroll.py", "-k", "batched"),
    ),
    Mutant(
        "a live writer's part file is removed as stale",
        "edge_pse/atomic.py",
        "            if _lock(fd):\n",
        "            if _lock(fd) or True:\n",
        ("tests/test_hostile.py", "-k", "killed_writer"),
    ),
    Mutant(
        "a full disk is a libsndfile traceback",
        "edge_pse/runtime/audio_io.py",
        '            raise EdgePseError(f"cannot write {self.path} ({_reason(e)}): is the disk full?") from None\n',
        "            raise\n",
        ("tests/test_run.py", "-k", "full_disk"),
    ),
    Mutant(
        "the input resampler's rates are swapped",
        "edge_pse/runtime/audio_io.py",
        'soxr.ResampleStream(rate, self.sample_rate, 1, dtype="float32", quality="HQ")',
        'soxr.ResampleStream(self.sample_rate, rate, 1, dtype="float32", quality="HQ")',
        ("tests/test_run.py", "-k", "stereo_44k"),
    ),
    Mutant(
        "a .wav output is written as float",
        "edge_pse/runtime/audio_io.py",
        'WRITE_FORMATS = {".wav": ("WAV", "PCM_16")',
        'WRITE_FORMATS = {".wav": ("WAV", "FLOAT")',
        ("tests/test_run.py", "-k", "keeps_length"),
    ),
    Mutant(
        "float_to_int16 truncates instead of rounding",
        "edge_pse/runtime/frontend.py",
        "    scaled = np.rint(np.asarray(wave, dtype=np.float64) * 32768.0)\n",
        "    scaled = np.trunc(np.asarray(wave, dtype=np.float64) * 32768.0)\n",
        ("tests/test_frontend.py", "-k", "ties_to_even"),
    ),
    Mutant(
        "stored int8 ranges are ignored at export",
        "edge_pse/exporters/pipeline.py",
        "            pinned = opts.ranges.formats.get(fmt) if",
        "            pinned = None if",
        ("tests/test_ranges.py", "-k", "pinned_ranges_into"),
    ),
    Mutant(
        "edge-pse run without --model uses the small",
        "edge_pse/cli/run.py",
        'DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "tiny-int8"\n',
        'DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "small-int8"\n',
        ("tests/test_shipped.py", "-k", "default_student"),
    ),
    Mutant(
        "a rollback keeps the current bundle active",
        "firmware_host/store.py",
        "            self._activate(prev, cur)\n",
        "            self._activate(cur, prev)\n",
        ("tests/test_store.py",),
    ),
    Mutant(
        "the agent processes a resent hop again",
        "firmware_host/agent.py",
        "                return  # a duplicate sent before a reconnect: already processed, its output was resent\n",
        "                pass\n",
        ("tests/test_agent.py", "-k", "resent"),
    ),
    Mutant(
        "a new speaker set on a running stream is not applied",
        "edge_pse/runtime/backends/base.py",
        "                b._set_speaker_input(self._spk)\n",
        "                pass\n",
        ("tests/test_run_bundle.py", "-k", "keep_their_own"),
    ),
    Mutant(
        "a stream switch does not restore the stream's state",
        "edge_pse/runtime/backends/base.py",
        "            self._set_state(stream._state)\n",
        "            self.reset()\n",
        ("tests/test_run_bundle.py", "-k", "keep_their_own"),
    ),
    Mutant(
        "a manifest without its digest loads",
        "edge_pse/bundle.py",
        "    if DIGEST_KEY not in manifest:  # mandatory",
        "    if False:  # mandatory",
        ("tests/test_bundle.py", "-k", "unsealed"),
    ),
    Mutant(
        "a backend runs a model file whose shapes are not the manifest's",
        "edge_pse/runtime/backends/base.py",
        "        if got != want:\n",
        "        if False:\n",
        ("tests/test_bundle.py", "-k", "another_models_files"),
    ),
    Mutant(
        "an address over its share loses its newest login, not its oldest",
        "firmware_host/agent.py",
        "                evicted = self._pending.pop(min(mine)).sock\n",
        "                evicted = self._pending.pop(max(mine)).sock\n",
        ("tests/test_hostile.py", "-k", "over_its_share"),
    ),
    Mutant(
        "wrong tokens are answered at once however many came before",
        "firmware_host/agent.py",
        "        return min(most, first * 2.0 ** min(failures - MAX_FAILED_LOGINS - 1, 16))\n",
        "        return 0.0\n",
        ("tests/test_hostile.py", "-k", "failed_logins"),
    ),
    Mutant(
        "the speaker encoder runs a long clip's partials all at once",
        "edge_pse/enroll/runtime_encoder.py",
        "PARTIALS_PER_CALL = 16 ",
        "PARTIALS_PER_CALL = 100_000 ",
        ("tests/test_run.py", "-k", "120_s_limit"),
    ),
)


def run_mutant(m: Mutant, workdir: Path) -> tuple[bool, float, str]:
    """(caught, seconds, last line of pytest's output) for one mutant planted in a fresh copy."""
    copy = workdir / "repo"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(REPO, copy, ignore=COPY_IGNORE, symlinks=True)
    src = copy / m.path
    text = src.read_text()
    if text.count(m.old) != 1:
        raise SystemExit(f"mutant {m.name!r}: its source is no longer in {m.path} exactly once; update the mutant")
    src.write_text(text.replace(m.old, m.new))
    env = os.environ | {"PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    data = REPO.parent / "shared" / "data"
    if "EDGE_PSE_DATA" not in env and data.is_dir():  # the copy is not beside ../shared: point it there
        env["EDGE_PSE_DATA"] = str(data)
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [x for x in res.stdout.splitlines() if x.strip()]
    return res.returncode != 0, time.monotonic() - t0, lines[-1] if lines else res.stderr[-200:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="names (substrings) of the mutants to run")
    args = ap.parse_args()
    chosen = [m for m in MUTANTS if not args.only or any(s in m.name for s in args.only)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-pse-mutants-") as tmp:
        for m in chosen:
            caught, seconds, last = run_mutant(m, Path(tmp))
            rows.append((m, caught, seconds, last))
            print(f"{'caught' if caught else 'MISSED'}: {m.name} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    print("| planted fault | file | caught by | result |\n|---|---|---|---|")
    for m, caught, _, last in rows:
        verdict = f"caught ({last})" if caught else f"**missed** ({last})"
        print(f"| {m.name} | `{m.path}` | `{' '.join(m.tests)}` | {verdict} |")
    missed = [m.name for m, caught, _, _ in rows if not caught]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
