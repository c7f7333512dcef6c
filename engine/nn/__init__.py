"""Torch modules (transformer, VQ autoencoder, retriever): for training, export and the torch backend."""
