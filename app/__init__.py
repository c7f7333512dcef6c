"""Tessera Studio: the PySide6 canvas. Imports engine, never training."""
