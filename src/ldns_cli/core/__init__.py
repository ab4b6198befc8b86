"""The base layer: errors, console output, configs, safe output paths, the `SpikeData` data model,
checkpoints, runtime (allocator) tuning and the package version.

Imports no other part of the package; every other part may import it.
"""
