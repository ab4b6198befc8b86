"""The networks and observation models: the S4 layer and shared blocks, the autoencoder, the latent
denoiser, and the observation models that turn rates into spike counts.

Imports core only.
"""
