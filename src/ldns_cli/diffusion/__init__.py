"""Latent diffusion without the training loop: the noise schedule, the samplers and their
registry, the sampling loop, latent calibration and the stored `DiffusionModel`.

May import core, nn, conditions and evaluate (the layers below); not io, which sits on the same
layer.
"""
