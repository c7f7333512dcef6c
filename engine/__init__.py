"""Tessera engine: everything needed to *use* a model. Importing it never imports torch or Qt."""

__version__ = "0.1.0"
