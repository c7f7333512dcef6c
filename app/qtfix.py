"""Work around a PySide6 6.12.0 bug: `SignalInstance.emit()` returns `True` without a new reference.

Every emit of a Python-declared Signal then takes one reference from `True`; after a few thousand
emits (a minute of painting) `True` is deallocated and CPython aborts with "Fatal Python error:
bool_dealloc". This module measures the leak once and, only if it is there, wraps `emit` to give the
reference back. Every studio module takes `Signal` from here, so the check runs before any emit.
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal, SignalInstance

__all__ = ["Signal"]


class _Probe(QObject):
    ping = Signal()


def _emit_leaks_true() -> bool:
    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(32):
        probe.ping.emit()
    return before - sys.getrefcount(True) >= 32


if _emit_leaks_true():
    _original_emit = SignalInstance.emit

    def _emit(self, *args):
        result = _original_emit(self, *args)
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(result))  # the reference emit() forgot to add
        return result

    SignalInstance.emit = _emit
