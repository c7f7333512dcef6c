"""Torch modules (transformer, VQ autoencoder, retriever). Only training, export and the torch backend import these."""
