#!/usr/bin/env bash
# Build an emulated aarch64 Debian root that can run the edge-pse device agent under qemu-user.
#
#   firmware_host/emulation/make_rootfs.sh ROOT [MIRROR]          # bookworm, python3.11 (Pi OS Bookworm)
#   SUITE=trixie WHEEL=dist/edge_pse-*.whl firmware_host/emulation/make_rootfs.sh ROOT   # trixie, python3.13
#
# With WHEEL, the project itself is installed from that wheel into ROOT/opt/wheels (as a Pi user installs it).
#
# Needs (host, as root): apt-get install qemu-user-static debootstrap; a pip that can reach PyPI.
# What it does (docs/protocol.md, "Proof on ARM"):
#   1. debootstrap --foreign (first stage only: no chroot, no binfmt needed) a minbase arm64 root, with
#      python3.11 and its libraries downloaded by debootstrap's resolver, then unpacked with dpkg -x;
#   2. the aarch64 wheels of the torch-free runtime into ROOT/opt/wheels (pip --platform, binaries only);
#   3. a Raspberry Pi 4 /proc/cpuinfo inside ROOT: onnxruntime and ai-edge-litert read it at start-up
#      (cpuinfo library) and segfault under qemu-user when they see the host's x86 one.
# Run the agent with:
#   QEMU_CPU=cortex-a72 PYTHONPATH=REPO:ROOT/opt/wheels qemu-aarch64-static -L ROOT ROOT/usr/bin/python3.11 \
#       -m edge_pse agent --listen 127.0.0.1:PORT
# The finished root is marked with ROOT/.edge-pse-rootfs-ok (written last; a half-built root lacks it).
set -euo pipefail

ROOT=${1:?usage: make_rootfs.sh ROOT [MIRROR]}
MIRROR=${2:-http://deb.debian.org/debian}
PIP=${PIP:-pip}
SUITE=${SUITE:-bookworm}
case "$SUITE" in
  bookworm) PY=3.11; SSL=libssl3; READLINE=libreadline8 ;;
  trixie) PY=3.13; SSL=libssl3t64; READLINE=libreadline8t64 ;;
  *) echo "SUITE must be bookworm or trixie" >&2; exit 2 ;;
esac
PY_DEBS=python$PY-minimal,libpython$PY-minimal,libpython$PY-stdlib,python$PY,libpython$PY,libffi8,$SSL,libsqlite3-0,libbz2-1.0,liblzma5,libexpat1,zlib1g,libuuid1,libncursesw6,$READLINE,libgomp1,libstdc++6,libgcc-s1,media-types

start=$(date +%s)
[[ -e "$ROOT/.edge-pse-rootfs-ok" ]] && { echo "rootfs already built: $ROOT"; exit 0; }
command -v qemu-aarch64-static >/dev/null || { echo "needs qemu-aarch64-static (apt-get install qemu-user-static)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
mkdir -p "$ROOT"

echo "[1/3] debootstrap (first stage) arm64 $SUITE from $MIRROR"
if [[ ! -x "$ROOT/usr/bin/python$PY" ]]; then
  debootstrap --foreign --variant=minbase --arch=arm64 --include="$PY_DEBS" "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 \
    || { tail -20 "$ROOT.debootstrap.log" >&2; exit 1; }
  # --foreign unpacks only the essential set; the included python debs wait in the archive cache
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg -x "$deb" "$ROOT"; done
fi
QEMU_CPU=cortex-a72 qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python$PY" -c 'import ssl, sqlite3, ctypes, platform; print("python", platform.python_version(), platform.machine())'

echo "[2/3] aarch64 wheels -> $ROOT/opt/wheels"
# pins as in pyproject.toml (runtime: base deps + the litert and onnx extras)
PLATFORM=(--platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64
  --platform manylinux2014_aarch64 --implementation cp --python-version "$PY" --abi "cp${PY/./}" --only-binary=:all:)
# webrtcvad (enrollment's VAD) from webrtcvad-wheels, its binary build: a Pi compiles the sdist, emulation cannot
"$PIP" install -q --target "$ROOT/opt/wheels" "${PLATFORM[@]}" --upgrade \
  "numpy>=2.0,<2.5" soundfile==0.14.0 soxr==1.1.0 rich==15.0.0 onnxruntime==1.32.0 ai-edge-litert==2.3.0 \
  webrtcvad-wheels==2.0.14.post1
if [[ -n "${WHEEL:-}" ]]; then  # the project itself, as a user installs it (the tests install theirs beside)
  "$PIP" install -q --target "$ROOT/opt/wheels" --no-deps --upgrade "$WHEEL"
fi

echo "[3/3] fake Raspberry Pi 4 /proc/cpuinfo"
mkdir -p "$ROOT/proc"
cat >"$ROOT/proc/cpuinfo" <<'CPU'
processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

processor	: 1
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

Hardware	: BCM2835
Revision	: c03111
Model		: Raspberry Pi 4 Model B Rev 1.1
CPU
mkdir -p "$ROOT/proc/device-tree"
printf 'Raspberry Pi 4 Model B Rev 1.1\0' >"$ROOT/proc/device-tree/model"

QEMU_CPU=cortex-a72 PYTHONPATH="$ROOT/opt/wheels" qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python$PY" -c \
  'import numpy, onnxruntime, ai_edge_litert.interpreter, soxr; print("numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__)'
date -u +%FT%TZ >"$ROOT/.edge-pse-rootfs-ok"
echo "rootfs ready in $(( $(date +%s) - start )) s: $ROOT"
