"""Training: the one training loop (`trainer`) with EMA and torchrun/DDP helpers, train/val
splits, and one module per stage (autoencoder, spike history, diffusion).

May import every layer below it: core, nn, conditions, evaluate, io, diffusion, store and generate.
"""
