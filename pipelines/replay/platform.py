"""Where a replay may run, and on which code: the run's platform, its CPU kernels, or its GPU;
never other code than the commit that trained the run."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pipelines.compute_platform import can_run, run_kernels, training_platform
from provenance import (
    TRAINING,
    Chain,
    CodeVersion,
    RunRecords,
)
from storage import ContentStore


class ReplayRefused(ValueError):
    """Replay cannot be done faithfully here; the message says what to do instead."""


def replay_platform(recorded: Mapping[str, object]) -> dict[str, object]:
    """This machine's platform as the run's retrains would see it: the CPU's, or for a run trained on a
    GPU this machine's GPU, which replay retrains on. A GPU run is refused on a machine without one: on
    the CPU its retrains land further from it than this machine's own rounding spreads a replay
    (`bench/replay_devices.py`: the image recipe's left-out values 5.6x that spread, so an honest run
    could fail)."""
    device = str(recorded.get("device", "cpu"))
    if device == "cpu":
        return training_platform()
    if not torch.cuda.is_available():
        raise ReplayRefused(
            f"the run trained on {device} ({recorded.get('gpu')}, CUDA {recorded.get('cuda')}, torch "
            f"{recorded.get('torch')}): replay it on a machine where torch sees a CUDA GPU (on the same GPU "
            "and torch build the recipes' runs repeat bit for bit); this machine has none"
        )
    return training_platform(device)


def same_platform(recorded: Mapping[str, object], here: Mapping[str, object]) -> bool:
    """Whether every property the run recorded of its platform holds here (a record from before a
    property was recorded is compared on those it has). The thread count is not compared: replay sets
    the recorded one (`pinned_threads`). A record with vector flags but no kernel pins is from before
    pins were recorded, when the pipeline set none: it ran unpinned."""
    if "cpu_flags" in recorded and "kernel_pins" not in recorded:
        recorded = {**recorded, "kernel_pins": {}}
    return bool(recorded) and all(here.get(k) == v for k, v in recorded.items() if k != "threads")


_BUILD = ("torch", "machine", "device")  # what no kernel pin can stand in for


def on_run_kernels(recorded: Mapping[str, object], here: Mapping[str, object]) -> bool:
    """Whether this process, on another CPU, runs the kernels the run trained on: the same torch build,
    machine and device, and started with the pins that select the run's kernels (`run_kernels`)."""
    kernels = run_kernels(recorded, str(here.get("cpu_flags", "")))
    same = all(here.get(k) == recorded.get(k) for k in (*_BUILD, "cpu_capability"))
    return kernels is not None and same and here.get("kernel_pins") == kernels


def replay_kernels(chain: Chain, store: ContentStore, run_id: str) -> dict[str, str] | None:
    """The kernel pins to start a replay of ``run_id`` with, so that this CPU runs the run's own
    kernels; None where this process already does (or is the run's platform), or where this CPU lacks
    their instruction sets or the run's torch build and machine. Pins act only in a process started
    with them (each library reads its pin once, when first used): `caravan verify --replay` restarts
    itself with them."""
    records = RunRecords(chain, store)
    _, training = records.parent(records.head(run_id), TRAINING)
    recorded = training.params.get("platform") or {}
    here = training_platform()
    kernels = run_kernels(recorded, str(here.get("cpu_flags", "")))
    if kernels is None or same_platform(recorded, here) or here.get("kernel_pins") == kernels:
        return None
    same = all(here.get(k) == recorded.get(k) for k in _BUILD)
    return kernels if same and can_run(kernels, str(here.get("cpu_flags", ""))) else None


def require_same_code(recorded: CodeVersion, here: CodeVersion) -> None:
    """Replay only with the code that trained the run, never compare against other code."""
    if recorded.git_commit is None or recorded.dirty:
        raise ReplayRefused(
            f"the run was trained by {recorded.describe()}: code that cannot be checked out again, "
            "so it cannot be replayed"
        )
    if here.git_commit != recorded.git_commit or here.dirty:
        raise ReplayRefused(
            f"the run was trained by commit {recorded.git_commit}, this checkout is {here.describe()}: "
            f"run `git checkout {recorded.git_commit}` in a clean working tree, then replay again"
        )
