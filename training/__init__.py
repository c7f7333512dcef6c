"""Tessera training: datasets, tokenizers, retriever, pretraining, SFT, evaluation (imports engine, torch)."""
