"""The seed's VAE in plain PyTorch: data, model, loss, training, checkpoints, figures.

Imports neither ray nor mlflow, so it is usable and testable alone.
"""
