"""The two PortAudio bindings live audio can use: sounddevice and PyAudio, behind one small interface.

LiveDuplex (live.py) asks an API which rates and channel counts a device takes and opens one duplex stream
whose callback gets int16 [frames, channels] arrays for input and output and whether PortAudio reported an
xrun. Everything else (the lossless rings, resampling, stats) is the same whichever binding runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from edge_pse.errors import EdgePseError

APIS = ("sounddevice", "pyaudio")
# callback(indata int16 [frames, in_ch], outdata int16 [frames, out_ch] to fill, xrun) -> None
Callback = Callable[[np.ndarray, np.ndarray, bool], None]


class AudioApi(Protocol):
    name: str

    def supports(self, device: int | str | None, rate: int, channels: int, output: bool) -> bool: ...

    def default_rate(self, device: int | str | None) -> int: ...

    def open(self, devices: tuple, rate: int, channels: tuple[int, int], callback: Callback): ...


def open_api(name: str = "auto") -> AudioApi:
    """'auto': sounddevice when it imports, else PyAudio."""
    if name not in ("auto", *APIS):
        raise EdgePseError(f"unknown audio API {name!r}; choose from auto, {', '.join(APIS)}")
    if name in ("auto", "sounddevice"):
        try:
            return SoundDeviceApi()
        except EdgePseError:
            if name == "sounddevice":
                raise
    return PyAudioApi()


class SoundDeviceApi:
    name = "sounddevice"

    def __init__(self) -> None:
        from edge_pse.runtime.devices import import_sounddevice

        self.sd = import_sounddevice()

    def supports(self, device, rate, channels, output) -> bool:
        check = self.sd.check_output_settings if output else self.sd.check_input_settings
        try:
            check(device=device, samplerate=rate, channels=channels, dtype="int16")
            return True
        except Exception:  # PortAudio reports unsupported settings in several ways
            return False

    def default_rate(self, device) -> int:
        return int(self.sd.query_devices(device, "input")["default_samplerate"])

    def open(self, devices, rate, channels, callback):
        def cb(indata, outdata, _frames, _time, status) -> None:
            try:
                callback(indata, outdata, bool(status.input_overflow or status.output_underflow))
            except BaseException as e:  # stop the stream; LiveDuplex has recorded the error
                raise self.sd.CallbackAbort from e

        try:
            stream = self.sd.Stream(
                samplerate=rate,
                blocksize=0,  # the host's own period (JACK: -p; ALSA: its period size)
                device=devices,
                channels=channels,
                dtype="int16",
                latency="low",
                callback=cb,
            )
            stream.start()
        except self.sd.PortAudioError as e:
            raise EdgePseError(f"cannot open the audio devices {devices}: {e}; see `edge-pse devices`") from None
        return stream


class PyAudioApi:
    """PyAudio (the design card's binding). A duplex stream has one channel count for both directions: the
    larger of the two is opened, the input down-mixed and the output duplicated as with sounddevice."""

    name = "pyaudio"

    def __init__(self) -> None:
        try:
            import pyaudio
        except ImportError:
            raise EdgePseError(
                "live audio needs sounddevice (pip install 'edge-pse[audio]') or PyAudio "
                "(apt-get install portaudio19-dev, then pip install 'edge-pse[pyaudio]')"
            ) from None
        self.pyaudio = pyaudio
        self.pa = pyaudio.PyAudio()

    def _index(self, device, output: bool) -> int:
        if isinstance(device, int):
            return device
        if device is None:
            info = self.pa.get_default_output_device_info() if output else self.pa.get_default_input_device_info()
            return int(info["index"])
        for i in range(self.pa.get_device_count()):
            info = self.pa.get_device_info_by_index(i)
            key = "maxOutputChannels" if output else "maxInputChannels"
            if device.lower() in str(info["name"]).lower() and info[key] > 0:
                return i
        raise EdgePseError(f"no audio device matches {device!r}; see `edge-pse devices`")

    def supports(self, device, rate, channels, output) -> bool:
        try:
            idx = self._index(device, output)
            if output:
                return bool(self.pa.is_format_supported(rate, output_device=idx, output_channels=channels,
                                                         output_format=self.pyaudio.paInt16))  # fmt: skip
            return bool(self.pa.is_format_supported(rate, input_device=idx, input_channels=channels,
                                                     input_format=self.pyaudio.paInt16))  # fmt: skip
        except (ValueError, OSError, EdgePseError):
            return False

    def default_rate(self, device) -> int:
        return int(self.pa.get_device_info_by_index(self._index(device, False))["defaultSampleRate"])

    def open(self, devices, rate, channels, callback):
        pa, ch = self.pyaudio, max(channels)
        xrun_flags = pa.paInputOverflow | pa.paOutputUnderflow

        def cb(in_data, frames, _time_info, status):
            indata = np.frombuffer(in_data, np.int16).reshape(frames, ch)
            outdata = np.zeros((frames, ch), np.int16)
            try:
                callback(indata, outdata, bool(status & xrun_flags))
            except BaseException:  # LiveDuplex has recorded the error
                return outdata.tobytes(), pa.paAbort
            return outdata.tobytes(), pa.paContinue

        try:
            stream = self.pa.open(
                format=pa.paInt16,
                channels=ch,
                rate=rate,
                input=True,
                output=True,
                input_device_index=self._index(devices[0], False),
                output_device_index=self._index(devices[1], True),
                frames_per_buffer=pa.paFramesPerBufferUnspecified,  # the host's own period
                stream_callback=cb,
            )
            stream.start_stream()
        except (OSError, ValueError) as e:
            raise EdgePseError(f"cannot open the audio devices {devices}: {e}; see `edge-pse devices`") from None
        return _PyAudioStream(stream)


class _PyAudioStream:
    """stop()/close() as sounddevice's stream has them."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def stop(self) -> None:
        self._stream.stop_stream()

    def close(self) -> None:
        self._stream.close()
