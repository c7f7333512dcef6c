"""ONNX Runtime sessions on the best execution provider that actually works here.

CUDA is used when onnxruntime offers it *and* a probe run on the new session succeeds; otherwise
the CPU provider, without the error spam a missing CUDA library makes ORT print.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's GEMM units)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    cores = set()
    try:
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                phys = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not line.strip() and core is not None:
                cores.add((phys, core))
                phys = core = None
        if core is not None:
            cores.add((phys, core))
    except OSError:
        pass
    return max(1, min(usable, len(cores) or usable))


def session_options(threads: int | None = None, spinning: bool = True) -> ort.SessionOptions:
    """intra-op threads: `threads`, else $TESSERA_THREADS, else the physical cores. spinning=False for
    sessions run now and then between other work (idle pool threads would spin on a core)."""
    so = ort.SessionOptions()
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.intra_op_num_threads = threads or int(os.environ.get("TESSERA_THREADS") or 0) or physical_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    return so


def provider_name(provider: str) -> str:
    return "cuda" if provider == CUDA else "cpu"


def create_session(
    path: str | Path,
    device: str = "auto",
    probe: Callable[[ort.InferenceSession], object] | None = None,
    threads: int | None = None,
    spinning: bool = True,
) -> tuple[ort.InferenceSession, str]:
    """An InferenceSession and the provider it runs on ("cuda" or "cpu").

    device="auto" tries CUDA (when onnxruntime offers it) and runs `probe(session)` on it; any
    failure falls back to the CPU silently. device="cuda" raises if CUDA does not work.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device != "cpu" and CUDA in ort.get_available_providers():
        session = _try_cuda(path, probe, threads, spinning)
        if session is not None:
            return session, "cuda"
        if device == "cuda":
            raise RuntimeError("CUDA was requested but ONNX Runtime could not run this model on it")
    elif device == "cuda":
        raise RuntimeError("CUDA was requested but this onnxruntime build has no CUDA provider")
    return ort.InferenceSession(str(path), session_options(threads, spinning), providers=[CPU]), "cpu"


def _try_cuda(path, probe, threads, spinning) -> ort.InferenceSession | None:
    so = session_options(threads, spinning)
    so.log_severity_level = 4  # a missing libcudnn is expected on many machines: stay quiet
    with _quiet_stderr():
        try:
            session = ort.InferenceSession(str(path), so, providers=[CUDA, CPU])
            if session.get_providers()[0] != CUDA:
                return None
            if probe is not None:
                probe(session)
        except Exception:  # noqa: BLE001 - any CUDA failure means: use the CPU
            return None
    return session


class _quiet_stderr:
    """Silence the C++ side's stderr (ORT prints provider load failures there)."""

    def __enter__(self):
        try:
            sys.stderr.flush()
            self.saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            self.saved = None

    def __exit__(self, *exc):
        if self.saved is not None:
            os.dup2(self.saved, 2)
            os.close(self.saved)
        return False
