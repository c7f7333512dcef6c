"""Tessera training: datasets, tokenizers, retriever, pretraining, SFT, evaluation. Imports engine and torch."""
