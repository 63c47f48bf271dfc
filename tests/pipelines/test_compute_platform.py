"""The CPU kernels a run trained on, and the pins that select them again on another CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipelines.compute_platform import (
    KERNEL_ENV,
    can_run,
    cpu_vector_flags,
    kernel_pins,
    pinned_threads,
    run_kernels,
    spawned,
    training_platform,
)

AVX2_CPU = "avx avx2 fma"
AVX512_CPU = "avx avx2 avx512bw avx512cd avx512dq avx512f avx512vl avx512_vnni fma"


def _record(flags: str, capability: str = "AVX2", **pins: str) -> dict[str, object]:
    return {"torch": "2.13.0", "machine": "x86_64", "cpu_capability": capability, "cpu_flags": flags,
            "kernel_pins": pins, "threads": 2, "device": "cpu"}


def test_a_runs_kernels_are_its_pins_or_else_the_highest_its_cpu_allows() -> None:
    assert run_kernels(_record(AVX2_CPU)) == {
        "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
    assert run_kernels(_record(AVX512_CPU, "AVX512")) == {
        "ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI", "MKL_CBWR": "AVX512_E1"}
    # pinned lower: the pins; pinned above the CPU: its own level; oneDNN reads either case
    lower = _record(AVX512_CPU, "AVX2", ONEDNN_MAX_CPU_ISA="avx2", MKL_CBWR="AVX2")
    assert run_kernels(lower) == run_kernels(_record(AVX2_CPU))
    above = _record(AVX2_CPU, ONEDNN_MAX_CPU_ISA="AVX512_CORE_AMX", MKL_CBWR="AVX512")
    assert run_kernels(above) == run_kernels(_record(AVX2_CPU))
    # a pin MKL ignores (lower case) or these tables do not know: the CPU's own level
    assert run_kernels(_record(AVX512_CPU, "AVX512", MKL_CBWR="avx2"))["MKL_CBWR"] == "AVX512_E1"
    assert run_kernels(_record(AVX512_CPU, "AVX512", MKL_CBWR="AVX2,STRICT"))["MKL_CBWR"] == "AVX512_E1"
    assert run_kernels({"torch": "2.13.0", "machine": "x86_64"}) is None  # recorded before flags were
    assert run_kernels(_record("")) is None


def test_on_the_runs_own_cpu_flags_only_the_runs_own_pins_are_set() -> None:
    """oneDNN and MKL pick their levels by the CPU's flags: where they are the run's, an unpinned run's
    are left unset (MKL's CBWR mode, set to any branch, rounds a matrix-vector product otherwise on an
    AMD EPYC), a pinned run's kept; ATen's capability is always set, over any pin of the auditor's."""
    unpinned = _record(AVX512_CPU, "AVX512")
    assert run_kernels(unpinned, AVX512_CPU) == {"ATEN_CPU_CAPABILITY": "avx512"}
    assert run_kernels(unpinned, f"{AVX512_CPU} amx_tile") == run_kernels(unpinned)  # another CPU: as before
    pinned = _record(AVX512_CPU, "AVX2", ONEDNN_MAX_CPU_ISA="avx2", MKL_CBWR="AVX2")
    assert run_kernels(pinned, AVX512_CPU) == run_kernels(pinned)


def test_a_cpu_runs_pinned_kernels_only_where_it_has_their_instruction_sets() -> None:
    assert can_run(run_kernels(_record(AVX2_CPU)), AVX512_CPU)  # a newer CPU runs an older one's
    assert not can_run(run_kernels(_record(AVX512_CPU, "AVX512")), AVX2_CPU)
    assert not can_run({"MKL_CBWR": "AVX512_E9"}, AVX512_CPU)  # unknown level: no


def test_the_pins_of_this_process_are_recorded_as_set() -> None:
    env = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "PATH": "/bin", "ONEDNN_MAX_CPU_ISA": ""}
    assert kernel_pins(env) == {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
    assert training_platform()["kernel_pins"] == kernel_pins()


# 20 SGD steps of a small CNN (oneDNN's convolutions) and an MLP (MKL's matmuls), their weights hashed.
_TRAIN = """
import hashlib, torch
from torch import nn
torch.manual_seed(0); torch.set_num_threads(1)
g = torch.Generator().manual_seed(1)
x, y = torch.randn(32, 3, 12, 12, generator=g), torch.randint(0, 10, (32,), generator=g)
model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(800, 64), nn.GELU(),
                      nn.Linear(64, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(20):
    opt.zero_grad(); nn.functional.cross_entropy(model(x), y).backward(); opt.step()
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())
"""


# a matrix-vector product (MKL's sgemv), hashed
_MV = """
import hashlib, torch
torch.manual_seed(0)
m, v = torch.randn(512, 3000), torch.randn(3000)
print(hashlib.sha256((m @ v).numpy().tobytes()).hexdigest())
"""


def _bits(script: str, pins: dict[str, str]) -> str:
    """What ``script`` prints in a fresh process started with ``pins`` in place of any kernel pins here."""
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV}
    out = subprocess.run([sys.executable, "-c", script], env={**env, **pins}, capture_output=True, text=True,
                         check=True, timeout=300)
    return out.stdout.strip()


@pytest.mark.skipif(not cpu_vector_flags(), reason="the CPU's flags are not readable here")
def test_the_pins_derived_from_this_cpus_flags_give_its_unpinned_bits() -> None:
    """What lets an auditor replay an unpinned run: the levels derived from its CPU's flags are the
    ones each library picked by itself. (A level lower than the CPU's changes the bits.)"""
    natural = _bits(_TRAIN, {})
    assert _bits(_TRAIN, run_kernels(training_platform())) == natural
    if "avx512f" in cpu_vector_flags().split():
        assert _bits(_TRAIN, run_kernels(_record(AVX2_CPU))) != natural


@pytest.mark.skipif(not cpu_vector_flags(), reason="the CPU's flags are not readable here")
def test_an_unpinned_run_on_this_cpu_keeps_its_bits_under_the_replays_pins() -> None:
    """A matrix-vector product (MKL's sgemv), unpinned and under the pins a replay on this CPU starts
    with: the same bits."""
    here = training_platform()
    assert _bits(_MV, run_kernels(here, cpu_vector_flags())) == _bits(_MV, {})


# MKL's dynamic-threading flag, read from the MKL that torch links into libtorch_cpu (an internal symbol:
# "absent" where this build has none), in a fresh process before and inside `pinned_threads`.
_MKL_DYNAMIC = """
import ctypes, torch
from pipelines.compute_platform import pinned_threads
lib = ctypes.CDLL(torch.__file__.replace("__init__.py", "lib/libtorch_cpu.so"))
dynamic = getattr(lib, "mkl_serv_get_dynamic", None)
if dynamic is None:
    print("absent")
else:
    before = dynamic()
    with pinned_threads():
        print(before, dynamic())
"""


def test_pinned_threads_sets_the_count_and_stops_mkls_dynamic_threading() -> None:
    """A run trains under `pinned_threads` as its replay does: the count set and then restored, and MKL,
    which by default may use fewer threads than asked (and a matmul split among fewer threads rounds
    otherwise), held to it."""
    before = torch.get_num_threads()
    with pinned_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before  # restored
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _MKL_DYNAMIC], cwd=root, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    if out == ["absent"] or not torch.backends.mkl.is_available():
        pytest.skip("this torch build exposes no MKL dynamic-threading flag")
    assert out[1] == "0", out  # fixed inside (dynamic before, "1", unless MKL_DYNAMIC=FALSE is set)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_records_its_gpu_beside_the_cpu() -> None:
    cpu, gpu = training_platform(), training_platform("cuda")
    assert gpu == {**cpu, "device": "cuda", "gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                   "cudnn": torch.backends.cudnn.version()}
    assert cpu["device"] == "cpu" and "gpu" not in cpu


def _threads_and_pid(threads: int) -> tuple[int, int]:
    torch.set_num_threads(threads)
    return torch.get_num_threads(), os.getpid()


def _refuse(why: str) -> None:
    raise ValueError(why)


def _die(code: int) -> None:
    os._exit(code)  # as a process killed for memory ends: no result, no exception


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def test_a_spawned_call_returns_here_raises_here_and_never_waits_on_a_dead_process() -> None:
    """Replay's band retrain runs beside the first this way (`pipelines.replay`)."""
    with spawned(_threads_and_pid, 1) as result:
        threads, pid = result()
    assert threads == 1 and pid != os.getpid()
    with spawned(_refuse, "no such label") as result, pytest.raises(ValueError, match="no such label"):
        result()
    with spawned(_die, 3) as result, pytest.raises(ChildProcessError, match=r"_die.*exit code 3"):
        result()
    start = time.perf_counter()
    with pytest.raises(KeyError), spawned(_sleep, 600):  # leaving the block ends the process
        raise KeyError("the first retrain failed")
    assert time.perf_counter() - start < 60
