"""What a run's float math ran on, and how an auditor's CPU runs the same kernels again.

Three libraries pick their CPU kernels at run time, each by the CPU's instruction sets: ATen (its
CPU capability), oneDNN (convolutions, some linear layers) and MKL (matmuls). On this project's
AVX-512 machine, capping any one of them at AVX2 changed the bits of an MLP, a CNN and a transformer
after 20 SGD steps. Each can be pinned by an environment variable read when the library is first
used: ``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``, ``MKL_CBWR`` (MKL's conditional numerical
reproducibility branch). A process started with a run's pins, on a CPU that has those instruction
sets, runs that run's kernels: an auditor with a newer CPU can then replay an older CPU's run bit for
bit instead of within a rounding band. A run records the pins it trained under; where it had none,
they are derived from its CPU's vector flags (the highest level each library would pick by itself:
on this machine the derived pins gave the unpinned bits). A derivation that misses (a CPU level the
tables below do not know) only costs the bit-for-bit check: replay then falls back to its band.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")

_AVX512 = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})
_AVX2 = frozenset({"avx2", "fma"})
# Each library's levels, highest first, with the vector flags a CPU needs for each.
_ONEDNN = (
    ("AVX512_CORE_AMX", _AVX512 | {"avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}),
    ("AVX512_CORE_FP16", _AVX512 | {"avx512_vnni", "avx512_bf16", "avx512_fp16"}),
    ("AVX512_CORE_BF16", _AVX512 | {"avx512_vnni", "avx512_bf16"}),
    ("AVX512_CORE_VNNI", _AVX512 | {"avx512_vnni"}),
    ("AVX512_CORE", _AVX512),
    ("AVX2_VNNI", _AVX2 | {"avx_vnni"}),
    ("AVX2", _AVX2),
    ("AVX", frozenset({"avx"})),
    ("SSE41", frozenset()),
)
_MKL = (
    ("AVX512_E1", _AVX512 | {"avx512_vnni"}),
    ("AVX512", _AVX512),
    ("AVX2", _AVX2),
    ("SSE4_2", frozenset()),
)
_ATEN = (("AVX512", _AVX512), ("AVX2", _AVX2), ("DEFAULT", frozenset()))
_LEVELS = {"ATEN_CPU_CAPABILITY": _ATEN, "ONEDNN_MAX_CPU_ISA": _ONEDNN, "MKL_CBWR": _MKL}


def training_platform(device: str = "cpu") -> dict[str, object]:
    """What a bit-for-bit replay must match: the torch build, the CPU architecture, the vector kernels
    ATen dispatches to on it (its CPU capability: the unvectorized DEFAULT rounded the image recipe's
    training differently from AVX2/AVX512), the CPU's vector flags (oneDNN and MKL pick their own
    levels by them), the kernel pins set in this process's environment, the device, and torch's
    intra-op thread count. Reductions are split by thread, so another count rounds differently (the
    image recipe's convolutions do); the run trains and replay retrains under ``pinned_threads``. A run on
    ``device="cuda"`` adds the GPU, the CUDA and cuDNN versions (`gpu_platform`)."""
    import torch

    platform_ = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_vector_flags(),
        "kernel_pins": kernel_pins(),
        "threads": torch.get_num_threads(),
        "device": "cpu",
    }
    return platform_ if device == "cpu" else {**platform_, "device": device, **gpu_platform()}


@contextmanager
def pinned_threads(threads: int | None = None) -> Iterator[None]:
    """torch's intra-op thread count set explicitly, to ``threads`` (a run's recorded count) or, where
    None, the count it has, and restored after. Float reductions are split by thread, so another count
    rounds differently: a matmul whose inner dimension MKL splits among threads (a weight's gradient,
    summed over a batch) changed its bits from 2 threads to 1 here. Set explicitly, the count also
    reaches MKL as a fixed one: torch passes it on, and MKL's dynamic threading (on by default,
    ``MKL_DYNAMIC``, free to use fewer threads than asked at run time) stops, as Intel's conditions for
    run-to-run reproducibility ask. A run trains so and replay retrains so, under the same settings. A
    count above this machine's cores is slower, not different."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads or before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def spawned(fn: Callable[..., T], *args: object) -> Iterator[Callable[[], T]]:
    """``fn(*args)`` in a spawned process (its own torch thread pools; a forked one would copy this
    process's mid-use) while the block runs here. The block gets a call that waits for the result: the
    process's exception raised again here, and a process that ended without a result (killed for
    memory, say) a ChildProcessError naming its exit code, where a process pool would wait forever.
    Leaving the block ends the process."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_send_result, args=(send, fn, args), daemon=True)
    process.start()
    send.close()  # this end is the child's: its exit closes the pipe

    def result() -> T:
        try:
            kind, value = receive.recv()
        except EOFError:
            process.join()
            raise ChildProcessError(f"{fn.__name__}, in a process of its own, ended without a result "
                                    f"(exit code {process.exitcode})") from None
        if kind == "error":
            raise value
        return value

    try:
        yield result
    finally:
        if process.is_alive():
            process.terminate()
        process.join()
        receive.close()


def _send_result(send: Connection, fn: Callable[..., object], args: tuple[object, ...]) -> None:
    try:
        out: tuple[str, object] = ("value", fn(*args))
    except BaseException as exc:  # noqa: BLE001 - raised again in the parent
        out = ("error", exc)
    try:
        send.send(out)
    except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
        send.send(("error", RuntimeError(f"{type(out[1]).__name__}: {out[1]}")))
    finally:
        send.close()


def gpu_platform() -> dict[str, object]:
    """The GPU a CUDA run trained on, and the CUDA and cuDNN builds torch runs it with."""
    import torch

    return {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()}


_VECTOR_FLAG = re.compile(r"(fma|avx\w*|amx\w*)")


def cpu_vector_flags(cpuinfo: str | None = None) -> str:
    """The CPU's vector-instruction flags (fma, avx*, amx*) sorted and space-joined, from ``cpuinfo``
    (Linux's /proc/cpuinfo by default); "" where the system does not say."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return " ".join(sorted(f for f in line.partition(":")[2].split() if _VECTOR_FLAG.fullmatch(f)))
    return ""


def kernel_pins(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The kernel pins set in ``environ`` (this process's by default), as set: the libraries ignore a
    value they do not know (ATen reads ``avx2`` but not ``AVX2``, MKL ``AVX2`` but not ``avx2``)."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in KERNEL_ENV if env.get(k)}


def run_kernels(recorded: Mapping[str, object], flags: str | None = None) -> dict[str, str] | None:
    """The pins that select the kernels a run trained on (its ``training_platform``), spelled as each
    library reads them: ATen's recorded capability, and for oneDNN and MKL the level its CPU's flags
    allow, capped by the run's own pin where it set a known one. On a CPU whose vector ``flags`` are
    the run's, oneDNN and MKL pick the run's levels by themselves, and only the run's own pins of theirs
    are set: MKL's CBWR mode, once set to any branch, changed a matrix-vector product's bits from the
    unpinned ones on an AMD EPYC (an unpinned run replayed under ``MKL_CBWR=AVX512_E1`` was not bit for
    bit). None for a record that names no capability or flags (from before they were recorded)."""
    capability, recorded_flags = recorded.get("cpu_capability"), recorded.get("cpu_flags")
    if not isinstance(capability, str) or not isinstance(recorded_flags, str) or not recorded_flags:
        return None
    pinned = recorded.get("kernel_pins")
    pins = pinned if isinstance(pinned, Mapping) else {}
    have = set(recorded_flags.split())
    kernels = {"ATEN_CPU_CAPABILITY": capability.lower()}
    for name in ("ONEDNN_MAX_CPU_ISA", "MKL_CBWR"):
        if flags == recorded_flags and not pins.get(name):
            continue  # the library's own pick on these flags is the run's
        levels = [level for level, _ in _LEVELS[name]]
        allowed = levels.index(_highest(_LEVELS[name], have))
        pin = str(pins.get(name) or "")
        pin = pin.upper() if name == "ONEDNN_MAX_CPU_ISA" else pin  # oneDNN reads either case
        kernels[name] = levels[max(allowed, levels.index(pin))] if pin in levels else levels[allowed]
    return kernels


def can_run(kernels: Mapping[str, str], flags: str) -> bool:
    """Whether a CPU with vector ``flags`` has every instruction set the pinned ``kernels`` use (a
    level these tables do not know: no)."""
    have = set(flags.split())
    for name, level in kernels.items():
        needs = dict(_LEVELS.get(name, ())).get(level.upper())
        if needs is None or not needs <= have:
            return False
    return True


def _highest(levels: tuple[tuple[str, frozenset[str]], ...], have: set[str]) -> str:
    return next(name for name, needs in levels if needs <= have)
