"""Per-op profile of each model file of a bundle, in its own runtime, 1 thread (a benchmark, not a test).

python benchmarks/op_profile.py [BUNDLE ...] [--hops 2000] [--warmup 200] [--top 12] [--json OUT]
                                [--litert-kernels xnnpack builtin] [--perf-seconds 5]

Why: the bench says how long a hop takes, not where the time goes. This runs every model file of the bundles
(default: the shipped tiny-int8 and small-int8) in its runtime, hop by hop on the demo mixture with the demo
speaker and the state carried as in the bench (the bundle's own Backend class does the I/O), and prints, per
file, the time per hop by op type, the Q/DQ, reshape, float and overhead shares, and the graph's pieces that
cost time and compute nothing. Methods, per runtime:

- LiteRT (.tflite): the ai-edge-litert Python API has no op profiler, but the wheel ships the LiteRT C library
  (libLiteRt.so) whose CompiledModel has one; it is driven through ctypes, once with the XNNPACK CPU kernels
  (what the Interpreter in the bench runs: the whole graph is one XNNPACK partition) and once with the builtin
  TFLite kernels (every TFLite op timed on its own, by node). XNNPACK reports each of its ops in whole
  microseconds, rounded down: ops under 1 us read 0 and the rest of the delegate's time is a row of its own.
  So, where `perf` works, the bench's own Interpreter loop (no profiler inside the runtime) is also sampled
  (perf record -e cpu-clock:u) and its time split by symbol: XNNPACK microkernels by kind (GEMM, QUANTIZE /
  DEQUANTIZE converts, float elementwise ...), XNNPACK's per-op dispatch, the Python glue.
- ExecuTorch (.pte): ETDump (load_program(..., enable_etdump=True)) read by executorch.devtools.Inspector:
  delegate calls and kernels outside the delegate in ns, XNNPACK's ops inside in whole us as above.
- ONNX Runtime (.onnx): SessionOptions.enable_profiling, the JSON trace's node events (whole us, rounded down),
  the optimized graph saved beside it to tell weight DequantizeLinear from activation Q/DQ.

Profiling adds a clock read per op: compare `process p50` (profiler off, as the bench measures) with the
profiled totals, not the bench with the table. Run it with nothing else on the machine, or say what ran.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge_pse.bench.cell import hop_signal
from edge_pse.bundle import Bundle, FileEntry
from edge_pse.runtime.backends import FORMAT_BACKEND, open_backend

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLES = [ROOT / "edge_pse/bundles/tiny-int8", ROOT / "edge_pse/bundles/small-int8"]
QDQ = {"QUANTIZE", "DEQUANTIZE", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Convert (NC)"}
RESHAPE = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "Static Reshape (NC)", "Reshape", "Squeeze", "Unsqueeze", "Flatten",
           "Identity", "Copy (NC)"}  # fmt: skip
MOVE = {"CONCATENATION", "SLICE", "STRIDED_SLICE", "SPLIT", "SPLIT_V", "TRANSPOSE", "GATHER", "PAD", "PACK",
        "UNPACK", "Concat", "Slice", "Split", "Transpose", "Gather", "Pad"}  # fmt: skip
OVERHEAD = "overhead"


@dataclass
class Row:
    op: str  # op type as the runtime names it
    cls: str  # Q/DQ, reshape, move, float, int8, compute (dtype not known), overhead
    count: float = 0.0  # occurrences per hop
    us: float = 0.0  # total per hop
    top: str = ""  # the costliest node of this type: name (us per hop)
    share: float = 0.0
    net: float | None = None  # us less an estimated per-node profiler floor (ONNX Runtime only)


@dataclass
class Profile:
    file: str
    runtime: str
    method: str
    hops: int
    process_p50_us: float | None  # Backend.process with the profiler off, as the bench measures it
    call_us: float | None  # the runtime call with the profiler on, mean per hop (the rows add up to it)
    rows: list[Row] = field(default_factory=list)
    nodes: list[dict] = field(default_factory=list)  # costliest single nodes
    summary: dict = field(default_factory=dict)  # us per hop per class
    findings: list[str] = field(default_factory=list)  # what costs and computes nothing
    notes: list[str] = field(default_factory=list)
    process_label: str = "process p50, profiler off (as the bench)"
    call_label: str = "runtime call, profiler on"


class Acc:
    """Per-node totals over the profiled hops; rows by op type at the end."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str], list] = {}  # (op, name) -> [cls, total us, occurrences]

    def add(self, op: str, name: str, cls: str, us: float, n: int = 1) -> None:
        r = self.nodes.setdefault((op, name), [cls, 0.0, 0])
        r[1] += us
        r[2] += n

    def finish(self, prof: Profile, hops: int, top: int) -> None:
        by_type: dict[tuple[str, str], Row] = {}
        best: dict[tuple[str, str], tuple[float, str]] = {}
        nodes = []
        for (op, name), (cls, us, n) in self.nodes.items():
            us /= hops
            row = by_type.setdefault((op, cls), Row(op, cls))
            row.count += n / hops
            row.us += us
            if us >= best.get((op, cls), (-1.0, ""))[0]:
                best[(op, cls)] = (us, name)
            if cls != OVERHEAD:
                nodes.append({"op": op, "name": name, "cls": cls, "count": n / hops, "us": us})
        total = sum(r.us for r in by_type.values())
        for key, row in by_type.items():
            row.share = 100 * row.us / total if total else 0.0
            us, name = best[key]
            if row.count > 1.5 and name:
                row.top = f"{name} ({us:.2f})"
        prof.rows = sorted(by_type.values(), key=lambda r: -r.us)
        prof.nodes = sorted(nodes, key=lambda r: -r["us"])[:top]
        summary: dict[str, float] = defaultdict(float)
        for r in prof.rows:
            summary[r.cls] += r.us
        prof.summary = dict(summary)
        if prof.call_us is None:
            prof.call_us = total


def cls_of(op: str, dtype: str | None = None) -> str:
    if op in QDQ or "quantize_per" in op:
        return "Q/DQ"
    if op in RESHAPE:
        return "reshape"
    if op in MOVE:
        return "move"
    if dtype in ("float", "float32", "float16"):
        return "float"
    if dtype in ("int8", "uint8", "int16", "int32"):
        return "int8"
    if "QS8" in op or "QU8" in op or "QC8" in op:
        return "int8"
    if "F32" in op or "F16" in op:
        return "float"
    return "compute"


@contextlib.contextmanager
def quiet_stderr():
    """Runtimes log their setup to fd 2 (LiteRT's accelerator registry, ExecuTorch's cpuinfo): hide it."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def process_p50(
    bundle: Bundle,
    entry: FileEntry,
    x: np.ndarray,
    emb: np.ndarray,
    hops: int,
    warmup: int,
    builtin_kernels: bool = False,
) -> float:
    """The bench's figure: Backend.process(hop), 1 thread, cyclic GC off, profiler off. builtin_kernels: the
    LiteRT Interpreter without its default XNNPACK delegate (same tensor indices, so the backend's plan holds)."""
    be = open_backend(bundle, FORMAT_BACKEND[entry.format], threads=1, quantization=entry.quantization)
    if builtin_kernels:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        no_xnnpack = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        be._it = Interpreter(str(bundle.path / entry.path), num_threads=1, experimental_op_resolver_type=no_xnnpack)
        be._it.allocate_tensors()
    be.set_speaker(emb)
    be.reset()
    for i in range(warmup):
        be.process(x[i])
    t = np.zeros(hops, np.int64)
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for i in range(hops):
            t0 = clock()
            be.process(x[warmup + i])
            t[i] = clock() - t0
    finally:
        gc.enable()
    return float(np.median(t)) / 1e3


# ---------------------------------------------------------------------------------------------------- LiteRT


class _LiteRtC:
    """The bits of LiteRT's C API (libLiteRt.so in the ai-edge-litert wheel) that a profiled run needs."""

    class Event(ctypes.Structure):  # ProfiledEventData, litert/c/litert_profiler_event.h
        _fields_ = [("tag", ctypes.c_char_p), ("event_type", ctypes.c_int), ("start_us", ctypes.c_uint64),
                    ("elapsed_us", ctypes.c_uint64), ("begin_mem", ctypes.c_size_t * 3),
                    ("end_mem", ctypes.c_size_t * 3), ("meta1", ctypes.c_int64), ("meta2", ctypes.c_int64),
                    ("source", ctypes.c_int)]  # fmt: skip

    OPERATOR, DELEGATE_OPERATOR, DELEGATE_PROFILED = 2, 4, 8  # LiteRtProfilerEventType

    def __init__(self) -> None:
        import ai_edge_litert

        self.lib = ctypes.CDLL(str(Path(ai_edge_litert.__file__).parent / "libLiteRt.so"))
        self.lib.LiteRtCreateEnvironment.restype = ctypes.c_int
        self._noop = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda p: None)  # options payloads stay ours
        self._keep: list = []

    def __call__(self, fn: str, *args) -> None:
        f = getattr(self.lib, fn)
        f.restype = ctypes.c_int
        status = f(*args)
        if status != 0:
            raise RuntimeError(f"{fn} returned LiteRtStatus {status}")

    def compile(self, path: Path, kernels: str):
        """A CompiledModel on the CPU with the profiler on; kernels: xnnpack or builtin. The options are the
        TOML payloads of LiteRT 2.x (identifiers runtime_options_string and xnnpack)."""
        p = ctypes.c_void_p
        env, model, opts, cm = p(), p(), p(), p()
        self("LiteRtCreateEnvironment", 0, None, ctypes.byref(env))
        self("LiteRtCreateModelFromFile", env, str(path).encode(), ctypes.byref(model))
        self("LiteRtCreateOptions", ctypes.byref(opts))
        self("LiteRtSetOptionsHardwareAccelerators", opts, 1)  # kLiteRtHwAcceleratorCpu
        for ident, toml in (("runtime_options_string", "enable_profiling = true\n"),
                            ("xnnpack", f'num_threads = 1\nkernel_mode = "{kernels}"\n')):  # fmt: skip
            payload = ctypes.create_string_buffer(toml.encode())
            oo = p()
            self("LiteRtCreateOpaqueOptions", ident.encode(), payload, self._noop, ctypes.byref(oo))
            self("LiteRtAddOpaqueOptions", opts, oo)
            self._keep.append(payload)
        self("LiteRtCreateCompiledModel", env, model, opts, ctypes.byref(cm))
        prof = p()
        self("LiteRtCompiledModelGetProfiler", cm, ctypes.byref(prof))
        if not prof.value:
            raise RuntimeError("this LiteRT build gave no profiler (runtime options not understood)")
        return env, model, cm, prof


class LiteRtProfiled:
    """Stands in for the ai_edge_litert Interpreter inside LiteRTBackend (set_tensor / get_tensor / invoke by
    the Interpreter's tensor indices), running a profiled CompiledModel instead, so the backend's own state
    carrying (int8 requantization included) is what runs."""

    def __init__(self, api: _LiteRtC, path: Path, interp, kernels: str) -> None:
        p, c = ctypes.c_void_p, ctypes
        self.api = api
        self.env, self.model, self.cm, self.prof = api.compile(path, kernels)
        sig = p()
        api("LiteRtGetModelSignature", self.model, 0, c.byref(sig))
        sig_io = interp._get_full_signature_list()["serving_default"]
        by_index = {idx: name for kind in ("inputs", "outputs") for name, idx in sig_io[kind].items()}
        self.spec = {idx: (interp.get_tensor(idx).dtype, interp.get_tensor(idx).shape) for idx in by_index}
        self.bufs: dict[str, ctypes.c_void_p] = {}
        lists = []
        for n_fn, name_fn, tensor_fn, req_fn in (
            ("LiteRtGetNumSignatureInputs", "LiteRtGetSignatureInputName", "LiteRtGetSignatureInputTensorByIndex",
             "LiteRtGetCompiledModelInputBufferRequirements"),
            ("LiteRtGetNumSignatureOutputs", "LiteRtGetSignatureOutputName", "LiteRtGetSignatureOutputTensorByIndex",
             "LiteRtGetCompiledModelOutputBufferRequirements"),
        ):  # fmt: skip
            n = c.c_size_t()
            api(n_fn, sig, c.byref(n))
            handles = []
            for i in range(n.value):
                name, tensor, req, buf = c.c_char_p(), p(), p(), p()
                tensor_type = c.create_string_buffer(512)  # LiteRtRankedTensorType, filled by the library
                api(name_fn, sig, i, c.byref(name))
                api(tensor_fn, sig, i, c.byref(tensor))
                api("LiteRtGetRankedTensorType", tensor, tensor_type)
                api(req_fn, self.cm, 0, i, c.byref(req))
                api("LiteRtCreateManagedTensorBufferFromRequirements", self.env, tensor_type, req, c.byref(buf))
                self.bufs[name.value.decode()] = buf  # a c_void_p: a bare int would be passed as a C int
                handles.append(buf.value)
            lists.append((c.c_void_p * len(handles))(*handles))
        self.ins, self.outs = lists
        self.by_index = {idx: self.bufs[name] for idx, name in by_index.items()}
        self.call_ns = 0

    def _view(self, idx: int, mode: int) -> np.ndarray:
        ptr = ctypes.c_void_p()
        self.api("LiteRtLockTensorBuffer", self.by_index[idx], ctypes.byref(ptr), mode)
        dtype, shape = self.spec[idx]
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer((ctypes.c_char * n).from_address(ptr.value), dtype=dtype).reshape(shape)

    def set_tensor(self, idx: int, value: np.ndarray) -> None:
        self._view(idx, 1)[...] = value  # kLiteRtTensorBufferLockModeWrite
        self.api("LiteRtUnlockTensorBuffer", self.by_index[idx])

    def get_tensor(self, idx: int) -> np.ndarray:
        out = self._view(idx, 0).copy()  # read
        self.api("LiteRtUnlockTensorBuffer", self.by_index[idx])
        return out

    def invoke(self) -> None:
        t0 = time.perf_counter_ns()
        self.api("LiteRtRunCompiledModel", self.cm, 0, len(self.ins), self.ins, len(self.outs), self.outs)
        self.call_ns += time.perf_counter_ns() - t0

    def events(self) -> list[tuple[str, int, float, int]]:
        n = ctypes.c_int()
        self.api("LiteRtGetNumProfilerEvents", self.prof, ctypes.byref(n))
        evs = (_LiteRtC.Event * n.value)()
        self.api("LiteRtGetProfilerEvents", self.prof, n.value, evs)
        return [(e.tag.decode(), e.event_type, float(e.elapsed_us), e.meta1) for e in evs]


def short_name(name: str) -> str:
    """litert-torch's tensor names are module paths ('a.b.E3NetStep/a.b.BlockStep_1/torch...Linear_fc1;1'):
    keep the modules below the root, without their packages."""
    part = next((p for p in name.split(";") if p), name)
    mods = [m.rsplit(".", 1)[-1] for m in part.split("/")]
    return "/".join(mods[1:] if len(mods) > 1 else mods)


def tflite_graph(interp) -> tuple[dict[int, tuple[str, str, str]], dict[str, list[int]]]:
    """From the Interpreter: node index -> (op, short output tensor name, output dtype), and the pieces of the
    graph to cost (node index lists): Q/DQ round trips, weight dequantizes, reshapes, and the float islands
    (connected float ops, with the DEQUANTIZE / QUANTIZE at their borders) by the module they come from."""
    ops = [o for o in interp._get_ops_details() if o["op_name"] != "DELEGATE"]
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    producer = {int(t): o["index"] for o in ops for t in o["outputs"]}
    consumers: dict[int, list[int]] = defaultdict(list)
    for o in ops:
        for t in o["inputs"]:
            consumers[int(t)].append(o["index"])
    graph_inputs = set(interp._get_full_signature_list()["serving_default"]["inputs"].values())
    nodes, by_index = {}, {o["index"]: o for o in ops}
    for o in ops:
        out = int(o["outputs"][0])
        dt = np.dtype(o["result_types"][0]).name if o["result_types"] else ""
        nodes[o["index"]] = (o["op_name"], short_name(tensors.get(out, {}).get("name", f"node{o['index']}")), dt)
    groups: dict[str, list[int]] = defaultdict(list)
    island = {i for i, (op, _, dt) in nodes.items() if dt.startswith("float") and op not in QDQ}
    parent = {i: i for i in island}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for o in ops:
        for t in o["inputs"]:
            j = producer.get(int(t))
            if o["index"] in island and j in island:
                parent[root(o["index"])] = root(j)
    members: dict[int, list[int]] = defaultdict(list)
    for i in island:
        members[root(i)].append(i)
    for ids in members.values():
        names = [nodes[i][1].rsplit("/", 1)[-1].split("_")[0] for i in ids]
        label = max(set(names), key=names.count)
        border = {
            producer[int(t)]
            for i in ids
            for t in by_index[i]["inputs"]
            if int(t) in producer and nodes[producer[int(t)]][0] == "DEQUANTIZE"
        }
        border |= {c for i in ids for t in by_index[i]["outputs"] for c in consumers[int(t)]
                   if nodes[c][0] == "QUANTIZE"}  # fmt: skip
        groups[f"float island {label}: float ops"] += ids
        groups[f"float island {label}: its DEQUANTIZE / QUANTIZE borders"] += sorted(border)
        groups[f"float island {label}: islands"].append(-1)
    for o in ops:
        i, op = o["index"], o["op_name"]
        src = int(o["inputs"][0])
        if op == "DEQUANTIZE" and src not in producer and src not in graph_inputs:
            groups["DEQUANTIZE of a constant (weights)"].append(i)
        elif op == "DEQUANTIZE" and by_index.get(producer.get(src), {}).get("op_name") == "QUANTIZE":
            groups["QUANTIZE -> DEQUANTIZE round trip (rounding only)"] += [producer[src], i]
        elif op == "QUANTIZE" and by_index.get(producer.get(src), {}).get("op_name") == "DEQUANTIZE":
            a, b = tensors[int(by_index[producer[src]]["inputs"][0])], tensors[int(o["outputs"][0])]
            same = a["quantization"] == b["quantization"]
            groups[f"DEQUANTIZE -> QUANTIZE ({'same scale: a no-op' if same else 'requantize'})"] += [producer[src], i]
        elif op in RESHAPE:
            groups["RESHAPE / SQUEEZE / EXPAND_DIMS (no math)"].append(i)
    return nodes, dict(groups)


def profile_litert(bundle, entry, x, emb, hops, warmup, top, kernels) -> Profile:
    from edge_pse.runtime.backends.litert import LiteRTBackend

    path = bundle.path / entry.path
    be = LiteRTBackend(bundle, entry, threads=1)
    interp = be._it
    label = "XNNPACK kernels (as the bench's Interpreter)" if kernels == "xnnpack" else "builtin TFLite kernels"
    prof = Profile(str(path), f"litert/{kernels}", "", hops, None, None)
    try:
        with quiet_stderr():
            api = _LiteRtC()
            fake = LiteRtProfiled(api, path, interp, "xnnpack" if kernels == "xnnpack" else "builtin")
    except (OSError, RuntimeError, AttributeError, KeyError) as e:
        return litert_fallback(prof, be, x, emb, hops, warmup, f"{type(e).__name__}: {e}")
    prof.method = (
        f"LiteRT C API profiler (libLiteRt.so of ai-edge-litert, ctypes), CompiledModel CPU, {label}, 1 thread"
    )
    be._it = fake
    be.set_speaker(emb)
    be.reset()
    for i in range(warmup):
        be.process(x[i])
    nodes, groups = tflite_graph(interp)
    acc, invoke_us, run_us, chunk = Acc(), 0.0, 0.0, 100
    fake.call_ns = 0
    for start in range(0, hops, chunk):
        api("LiteRtStartProfiler", fake.prof)
        for i in range(start, min(start + chunk, hops)):
            be.process(x[warmup + i])
        api("LiteRtStopProfiler", fake.prof)
        for tag, etype, us, meta in fake.events():
            if tag == "Invoke" and etype == 1:
                invoke_us += us
            elif etype == _LiteRtC.OPERATOR and "Delegate" not in tag:
                op, name, dt = nodes.get(meta, (tag, f"node{meta}", ""))
                acc.add(op, f"#{meta} {name}", cls_of(op, dt), us)
            elif etype in (_LiteRtC.DELEGATE_PROFILED, _LiteRtC.DELEGATE_OPERATOR):
                acc.add(tag, f"xnn#{meta}", cls_of(tag), us)
            elif etype == 1 and tag.startswith("LiteRT::Run"):
                acc.add(tag, "", OVERHEAD, us)
                run_us += us
        api("LiteRtResetProfiler", fake.prof)
    inner = sum(v[1] for k, v in acc.nodes.items() if v[0] != OVERHEAD)
    rest = "delegate + interpreter overhead, XNNPACK ops < 1 us (floored to 0)" if kernels == "xnnpack" else (
        "interpreter overhead between ops")  # fmt: skip
    acc.add(f"(Invoke not in op events: {rest})", "", OVERHEAD, max(invoke_us - inner, 0.0))
    call = fake.call_ns / 1e3
    acc.add("(run call outside LiteRT's events: C API, profiler bookkeeping)", "", OVERHEAD,
            max(call - invoke_us - run_us, 0.0))  # fmt: skip
    prof.call_us = call / hops
    acc.finish(prof, hops, top)
    if kernels == "xnnpack":
        prof.notes.append(
            "XNNPACK times each of its ops in whole microseconds, rounded down: most ops here read 0, so the "
            "per-op rows are lower bounds and the '(Invoke not in op events ...)' row holds the rest; the "
            "builtin-kernel table of the same file times every TFLite op without that rounding."
        )
        prof.notes.append("'Convert (NC)' is XNNPACK's QUANTIZE / DEQUANTIZE; 'Invalid Unary Op' is its label "
                          "for a unary op it has no name for (sigmoid/tanh-like).")  # fmt: skip
    else:
        prof.notes.append("builtin TFLite kernels, not the XNNPACK ones the bench runs: the ops' relative costs "
                          "and the graph's waste, not the bench's absolute times.")  # fmt: skip
        cost = {int(k.split()[0][1:]): v[1] / hops for (op, k), v in acc.nodes.items() if k.startswith("#")}
        for what, idx in sorted(groups.items()):
            if what.endswith(": islands"):
                continue
            n_islands = len(groups.get(what.split(":")[0] + ": islands", []))
            us = sum(cost.get(i, 0.0) for i in set(idx))
            where = f" ({n_islands} islands)" if what.endswith("float ops") else ""
            prof.findings.append(f"{what}{where}: {len(set(idx))} ops, {us:.1f} us/hop with builtin kernels")
    return prof


def litert_fallback(prof: Profile, be, x, emb, hops, warmup, why: str) -> Profile:
    """No op profiler: the Interpreter timed whole, and its op list (all in one XNNPACK partition or not)."""
    from collections import Counter

    ops = be._it._get_ops_details()
    prof.method = "no per-op times (LiteRT C API unusable here): op list from Interpreter._get_ops_details()"
    prof.notes.append(f"per-op times are not available from this runtime's Python API; C API failed: {why}")
    for op, n in Counter(o["op_name"] for o in ops).most_common():
        prof.rows.append(Row(op, cls_of(op), n, float("nan")))
    return prof


# ---------------------------------------------------------------------------------------------------- ExecuTorch


class _Timed:
    """Wraps a runtime object's call method to add up its wall time."""

    def __init__(self, obj, method: str) -> None:
        self.obj, self.ns = obj, 0
        self._call = getattr(obj, method)
        setattr(self, method, self._timed)

    def _timed(self, *args, **kwargs):
        t0 = time.perf_counter_ns()
        try:
            return self._call(*args, **kwargs)
        finally:
            self.ns += time.perf_counter_ns() - t0


def profile_executorch(bundle, entry, x, emb, hops, warmup, top) -> Profile:
    from executorch.runtime import Runtime

    from edge_pse.runtime.backends.executorch import ExecuTorchBackend

    path = bundle.path / entry.path
    prof = Profile(str(path), "executorch", "ETDump event tracer (executorch.runtime, enable_etdump=True) read by "
                   "executorch.devtools.Inspector; XNNPACK delegate, 1 thread", hops, None, None)  # fmt: skip
    with quiet_stderr():
        be = ExecuTorchBackend(bundle, entry, threads=1)
        program = Runtime.get().load_program(path, enable_etdump=True)
        timed = _Timed(program.load_method("forward"), "execute")
    be._method = timed
    be.set_speaker(emb)
    be.reset()
    for i in range(warmup):
        be.process(x[i])
    timed.ns = 0
    for i in range(hops):
        be.process(x[warmup + i])
    with tempfile.TemporaryDirectory() as tmp:
        etdump = Path(tmp) / "run.etdp"
        program.write_etdump_result_to_file(str(etdump), str(Path(tmp) / "debug.bin"))
        with warnings.catch_warnings(), quiet_stderr():
            warnings.simplefilter("ignore")
            from executorch.devtools import Inspector

            block = next(b for b in Inspector(etdump_path=str(etdump)).event_blocks if b.name == "Execute")
    acc = Acc()

    def us(e) -> float:  # the profiled hops' total, us (Inspector gives ms per execution)
        return 1e3 * float(np.sum(e.perf_data.raw[warmup:])) if e.perf_data is not None else 0.0

    def n(e) -> int:
        return len(e.perf_data.raw[warmup:]) if e.perf_data is not None else 0

    inner, calls, method_us, k_delegate = 0.0, {"DELEGATE_CALL": 0.0, "OPERATOR_CALL": 0.0}, 0.0, 0
    pending: list = []
    for e in block.events:
        if e.is_delegated_op:
            pending.append(e)
        elif e.name == "DELEGATE_CALL":
            for d in pending:
                op = re.sub(r" #\d+$", "", d.name)
                acc.add(op, f"delegate {k_delegate}: {d.name}", cls_of(op), us(d), n(d))
                inner += us(d)
            acc.add("(XNNPACK delegate call: overhead + ops < 1 us floored to 0)", "", OVERHEAD,
                    us(e) - sum(us(d) for d in pending))  # fmt: skip
            calls["DELEGATE_CALL"] += us(e)
            pending, k_delegate = [], k_delegate + 1
        elif e.name.startswith("native_call_"):
            op = e.name[len("native_call_") :]
            acc.add(op, f"{op} #{len([k for k in acc.nodes if k[0] == op])}", cls_of(op, "float"), us(e), n(e))
            inner += us(e)
        elif e.name == "OPERATOR_CALL":
            calls["OPERATOR_CALL"] += us(e)
        elif e.name == "Method::execute":
            method_us = us(e)
    native = sum(v[1] for k, v in acc.nodes.items() if v[0] == "float")
    acc.add("(kernel call overhead outside the delegate)", "", OVERHEAD, max(calls["OPERATOR_CALL"] - native, 0.0))
    acc.add("(Method::execute outside the calls)", "", OVERHEAD, max(method_us - sum(calls.values()), 0.0))
    acc.add("(execute call outside Method::execute: pybind, tensors)", "", OVERHEAD, max(timed.ns / 1e3 - method_us, 0))
    prof.call_us = timed.ns / 1e3 / hops
    acc.finish(prof, hops, top)
    outside = [op for (op, name), v in acc.nodes.items() if v[0] == "float"]
    prof.findings.append(
        f"{k_delegate} XNNPACK delegate calls per hop, split by {len(outside)} kernels outside the delegate "
        f"({', '.join(sorted(set(outside))) or 'none'}): every split costs a delegate call and the float "
        f"kernels between them ({prof.summary.get('float', 0):.1f} us/hop float kernels)"
    )
    prof.notes.append("XNNPACK's ops are timed in whole us, rounded down (most read 0): per-op rows are lower "
                      "bounds, the delegate-call overhead row holds the rest. 'Convert (NC)' is Q/DQ.")  # fmt: skip
    return prof


# ---------------------------------------------------------------------------------------------------- ONNX Runtime


def profile_onnx(bundle, entry, x, emb, hops, warmup, top) -> Profile:
    import onnx
    import onnxruntime as ort

    from edge_pse.runtime.backends.onnx import OnnxBackend

    path = bundle.path / entry.path
    prof = Profile(str(path), "onnx", f"ONNX Runtime {ort.__version__} SessionOptions.enable_profiling, JSON trace "
                   "node events; CPUExecutionProvider, 1 thread, sequential", hops, None, None)  # fmt: skip
    be = OnnxBackend(bundle, entry, threads=1)
    be.set_speaker(emb)
    be.reset()
    for i in range(warmup):
        be.process(x[i])
    acc, chunk, skip, done, call_ns, run_us = Acc(), 250, 3, 0, 0, 0.0
    node_dtype: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        while done < hops:
            n = min(chunk, hops - done)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "ort")
            opts.optimized_model_filepath = str(optimized)
            opts.log_severity_level = 3  # no warning about saving an optimized graph
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            timed = _Timed(sess, "run")
            be._sess = timed
            for _ in range(skip):  # a new session's first runs allocate: run them, leave them out
                be.process(x[warmup + done])
            timed.ns = 0
            for i in range(n):
                be.process(x[warmup + done + i])
            call_ns += timed.ns
            trace = Path(sess.end_profiling())
            events = json.loads(trace.read_text())
            trace.unlink()
            runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[skip:]
            first = runs[0][0]
            run_us += sum(b - a for a, b in runs)
            for e in events:
                if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < first:
                    continue
                a = e.get("args", {})
                out = a.get("output_type_shape") or [{}]
                dt = next(iter(out[0]), "")
                name = e["name"][: -len("_kernel_time")]
                node_dtype[name] = dt
                acc.add(a.get("op_name", "?"), name, cls_of(a.get("op_name", "?"), dt), float(e["dur"]))
            done += n
        graph = onnx.load(str(optimized)).graph
    nodes_us = sum(v[1] for v in acc.nodes.values())
    acc.add("(model_run not in node events: executor overhead, sub-us rounding)", "", OVERHEAD, run_us - nodes_us)
    acc.add("(run call outside model_run: pybind, I/O copies)", "", OVERHEAD, max(call_ns / 1e3 - run_us, 0.0))
    prof.call_us = call_ns / 1e3 / hops
    acc.finish(prof, hops, top)
    per_node = [v[1] / v[2] for v in acc.nodes.values() if v[0] != OVERHEAD and v[2]]
    floor = min(per_node) if per_node else 0.0
    for r in prof.rows:
        r.net = None if r.cls == OVERHEAD else max(r.us - r.count * floor, 0.0)
    net = sum(r.net for r in prof.rows if r.net is not None)
    prof.findings.append(
        f"profiler floor: the cheapest node reads {floor:.2f} us per call with the profiler on (ORT's profiler "
        f"slows every node, onnxruntime issue #20238); 'net' subtracts that per node: {net:.0f} us/hop of nodes "
        f"net vs {prof.summary and sum(v for k, v in prof.summary.items() if k != OVERHEAD):.0f} raw"
    )
    cost = {name: v[1] / hops for (op, name), v in acc.nodes.items()}
    consts = {i.name for i in graph.initializer}
    producer = {o: nd for nd in graph.node for o in nd.output}
    groups: dict[str, list[str]] = defaultdict(list)
    for nd in graph.node:
        src = producer.get(nd.input[0]) if nd.input else None
        if nd.op_type == "DequantizeLinear" and nd.input[0] in consts:
            groups["DequantizeLinear of a weight (every hop)"].append(nd.name)
        elif nd.op_type == "DequantizeLinear" and src is not None and src.op_type == "QuantizeLinear":
            groups["QuantizeLinear -> DequantizeLinear round trip (rounding only)"] += [src.name, nd.name]
        elif nd.op_type in RESHAPE:
            groups["Reshape / Squeeze / Unsqueeze (no math)"].append(nd.name)
    for what, names in sorted(groups.items()):
        prof.findings.append(f"{what}: {len(names)} nodes, {sum(cost.get(n, 0.0) for n in names):.1f} us/hop")
    float_ops = sorted({op for (op, name), v in acc.nodes.items() if v[0] == "float"})
    prof.findings.append(f"float compute ({', '.join(float_ops)}): {prof.summary.get('float', 0):.1f} us/hop")
    prof.notes.append("ORT's node durations are whole us, rounded down: sub-us nodes read 0 and the executor row "
                      "holds the rest. Node names are those of ORT's optimized graph.")  # fmt: skip
    return prof


# ---------------------------------------------------------------------------------------------------- sampled (perf)

XNN_KIND = {"vcvt": "convert", "rsum": "reduce (mean)", "rdsum": "reduce (mean)", "rminmax": "reduce"}


def perf_class(dso: str, sym: str) -> tuple[str, str]:
    """(class, label) of a sampled symbol: XNNPACK microkernels by datatype and kind, the rest by layer."""
    m = re.match(r"xnn_([a-z0-9]+(?:_[a-z]*\d+[a-z0-9]*)*?)_([a-z]+)_(?:minmax_)?(?:[a-z0-9]+_)*?ukernel", sym)
    if sym.startswith("xnn_") and "ukernel" in sym and m:
        types, kind = m.group(1), m.group(2)
        kind = "GEMM" if "gemm" in sym else XNN_KIND.get(kind, kind.lstrip("v") if kind.startswith("v") else kind)
        if kind == "convert":
            what = {"f32_qs8": "QUANTIZE", "qs8_f32": "DEQUANTIZE", "qs8": "requantize", "f32_qd8": "dynamic QUANTIZE"}
            return "Q/DQ", f"XNNPACK convert {types} ({what.get(types, 'convert')})"
        return ("float" if types.startswith(("f32", "f16")) else "int8"), f"XNNPACK {types} {kind}"
    if sym.startswith(("xnn_", "pthreadpool")):
        return OVERHEAD, "XNNPACK dispatch (operator run, threadpool, setup)"
    if "tflite::" in sym or "litert::" in sym or "TfLite" in sym:
        return OVERHEAD, "TFLite interpreter / XNNPACK delegate glue"
    if "pybind11" in sym or "interpreter_wrapper" in sym:
        return OVERHEAD, "pybind11 / Interpreter Python API"
    if dso.startswith("libpython"):
        return OVERHEAD, "Python (Backend.process glue)"
    if "multiarray" in dso or "umath" in dso or "openblas" in dso:
        return OVERHEAD, "numpy (Backend.process glue)"
    if dso.startswith(("libc.", "libc-", "libstdc++", "libm.", "ld-linux")):
        return OVERHEAD, "libc / libstdc++ (malloc, memcpy, ...)"
    return OVERHEAD, f"other ({dso})"


def perf_works() -> bool:
    if shutil.which("perf") is None:
        return False
    r = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock:u", "-o", os.devnull, "--", "true"],
                       capture_output=True)  # fmt: skip
    return r.returncode == 0


def perf_child(bundle_path: str, fmt: str, quantization: str, seconds: float, warmup: int) -> None:
    """Runs under `perf record -D -1`: the bench's Backend.process loop, sampled only between enable/disable."""
    bundle = Bundle.load(bundle_path)
    entry = bundle.file(fmt, quantization)
    be = open_backend(bundle, FORMAT_BACKEND[fmt], threads=1, quantization=entry.quantization)
    x, emb = hop_signal(bundle.spec.hop, warmup + 2000)
    be.set_speaker(emb)
    be.reset()
    for i in range(warmup):
        be.process(x[i])
    process, clock, hops = be.process, time.perf_counter, 0
    with open(os.environ["OP_PROFILE_CTL"], "w") as ctl, open(os.environ["OP_PROFILE_ACK"]) as ack:
        gc.disable()
        ctl.write("enable\n")
        ctl.flush()
        ack.readline()
        t0 = clock()
        while clock() - t0 < seconds:
            for i in range(warmup, warmup + 2000):
                process(x[i])
            hops += 2000
        elapsed = clock() - t0
        ctl.write("disable\n")
        ctl.flush()
        ack.readline()
    print(json.dumps({"hops": hops, "mean_us": elapsed / hops * 1e6}))


def profile_sampled(bundle, entry, warmup, top, seconds: float) -> Profile:
    path = bundle.path / entry.path
    prof = Profile(str(path), f"{FORMAT_BACKEND[entry.format]}/sampled",
                   f"perf record -e cpu-clock:u -F 2000 of the bench's own Backend.process loop (no profiler in "
                   f"the runtime), {seconds:.0f} s of hops, samples by symbol", 0, None, None)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ctl, ack, data = (str(Path(tmp) / n) for n in ("ctl", "ack", "perf.data"))
        os.mkfifo(ctl)
        os.mkfifo(ack)
        cmd = ["perf", "record", "-q", "-e", "cpu-clock:u", "-F", "2000", "-D", "-1", "--control",
               f"fifo:{ctl},{ack}", "-o", data, "--", sys.executable, __file__, "--perf-child", str(bundle.path),
               entry.format, entry.quantization, str(seconds), str(warmup)]  # fmt: skip
        env = {**os.environ, "OP_PROFILE_CTL": ctl, "OP_PROFILE_ACK": ack}
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            prof.notes.append(f"perf failed: {r.stderr.strip()[-300:]}")
            return prof
        run = json.loads(r.stdout.strip().splitlines()[-1])
        rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--sort", "dso,sym", "--percent-limit", "0"],
                             capture_output=True, text=True)  # fmt: skip
    prof.hops, prof.call_us = run["hops"], run["mean_us"]
    prof.call_label = "Backend.process mean while sampled"
    acc = Acc()
    line = re.compile(r"^\s+([\d.]+)%\s+(\S+)\s+\[\.\]\s+(.*?)\s*$")
    for m in map(line.match, rep.stdout.splitlines()):
        if m:
            share, dso, sym = float(m.group(1)), m.group(2), m.group(3)
            cls, label = perf_class(dso, sym)
            acc.add(label, sym, cls, share / 100 * run["mean_us"] * prof.hops, 0)
    acc.finish(prof, prof.hops, top)
    for r in prof.rows:  # the costliest symbol of each kind
        us, sym = max((v[1], k[1]) for k, v in acc.nodes.items() if k[0] == r.op)
        r.top = f"{sym[:70]} ({us / prof.hops:.2f})"
    prof.nodes = [dict(n, name=n["name"][:90]) for n in prof.nodes]
    prof.notes.append(
        "statistical: a row is its share of the samples times the loop's mean hop (perf on); per kernel kind, "
        "not per node (XNNPACK's microkernels serve every op of a kind)"
    )
    return prof


# ---------------------------------------------------------------------------------------------------- output


def print_profile(p: Profile) -> None:
    print(f"\n### {p.file} [{p.runtime}]\n\n{p.method}, {p.hops} hops")
    if p.process_p50_us is not None:
        print(f"{p.process_label}: {p.process_p50_us:.1f} us")
    if p.call_us is not None:
        print(f"{p.call_label}: {p.call_us:.1f} us/hop (the rows add up to this)")
    has_net = any(r.net is not None for r in p.rows)
    net_h, net_s = (" net us/hop |", "---|") if has_net else ("", "")
    print(f"\n| op | class | count/hop | us/hop |{net_h} share | costliest node (us/hop) |")
    print(f"|---|---|---|---|{net_s}---|---|")
    for r in p.rows:
        count = "" if r.cls == OVERHEAD or not r.count else f"{r.count:.0f}"
        net = (f" {r.net:.1f} |" if r.net is not None else " |") if has_net else ""
        print(f"| {r.op} | {r.cls} | {count} | {r.us:.2f} |{net} {r.share:.1f} % | {r.top} |")
    if p.summary:
        total = sum(p.summary.values())
        parts = ", ".join(f"{k} {v:.1f} us ({100 * v / total:.0f} %)" for k, v in sorted(p.summary.items(),
                          key=lambda kv: -kv[1]))  # fmt: skip
        print(f"\nby class: {parts}")
    if p.nodes:
        print("costliest nodes: " + "; ".join(f"{n['name']} [{n['op']}] {n['us']:.2f}" for n in p.nodes))
    for f in p.findings:
        print(f"- {f}")
    for n in p.notes:
        print(f"note: {n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="*", type=Path, default=DEFAULT_BUNDLES)
    ap.add_argument("--hops", type=int, default=2000, help="profiled hops per file")
    ap.add_argument("--warmup", type=int, default=200, help="untimed hops first")
    ap.add_argument("--top", type=int, default=12, help="costliest single nodes listed per file")
    ap.add_argument("--litert-kernels", nargs="+", default=["xnnpack", "builtin"], choices=["xnnpack", "builtin"])
    ap.add_argument(
        "--perf-seconds",
        type=float,
        default=5.0,
        help="LiteRT: also sample the bench's own Interpreter loop with perf for this long (0: skip)",
    )
    ap.add_argument("--json", type=Path, help="write the profiles here too")
    ap.add_argument("--perf-child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.perf_child:
        b, fmt, quantization, seconds, warmup = args.perf_child
        perf_child(b, fmt, quantization, float(seconds), int(warmup))
        return
    if args.hops < 1 or args.warmup < 1:
        ap.error("--hops and --warmup must be at least 1")
    use_perf = args.perf_seconds > 0 and perf_works()
    if args.perf_seconds > 0 and not use_perf:
        print("note: `perf record -e cpu-clock:u` does not work here: no sampled LiteRT view")
    profiles = []
    for bpath in args.bundles:
        bundle = Bundle.load(bpath)
        hop = bundle.spec.hop
        x, emb = hop_signal(hop, args.warmup + args.hops)
        print(f"\n## {bpath} ({bundle.manifest.get('preset')}, {', '.join(f.path for f in bundle.files)})")
        order = {"tflite": 0, "onnx": 1, "pte": 2}  # ExecuTorch last: it imports torch
        for entry in sorted(bundle.files, key=lambda f: order.get(f.format, 9)):
            p50 = process_p50(bundle, entry, x, emb, args.hops, args.warmup)
            common = (bundle, entry, x, emb, args.hops, args.warmup, args.top)
            jobs = {
                "tflite": [(f"litert/{k}", profile_litert, (*common, k)) for k in args.litert_kernels]
                + ([("litert/sampled", profile_sampled, (bundle, entry, args.warmup, args.top, args.perf_seconds))]
                   if use_perf else []),
                "onnx": [("onnx", profile_onnx, common)],
                "pte": [("executorch", profile_executorch, common)],
            }.get(entry.format, [])  # fmt: skip
            runs = []
            for runtime, fn, fargs in jobs:
                try:
                    runs.append(fn(*fargs))
                except Exception as e:  # a runtime without the profiling hook: say so, go on with the others
                    p = Profile(str(bundle.path / entry.path), runtime, "none: the profiler failed", 0, None, None)
                    p.notes.append(f"per-op times not available here ({type(e).__name__}: {e})")
                    runs.append(p)
            for p in runs:
                p.process_p50_us = p50
                if p.runtime == "litert/builtin":
                    p.process_p50_us = process_p50(bundle, entry, x, emb, args.hops, args.warmup, builtin_kernels=True)
                    p.process_label = "process p50, profiler off, Interpreter without XNNPACK (builtin kernels)"
                print_profile(p)
                profiles.append(p)
    if args.json:
        args.json.write_text(json.dumps([asdict(p) for p in profiles], indent=1, default=str))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
