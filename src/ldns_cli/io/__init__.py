"""File formats in and out (NWB, ldns HDF5, LFADS-style HDF5), the on-disk scratch for outputs
larger than memory, deterministic provenance, the built-in simulators and `ldns inspect`'s summary.

May import core, nn, conditions and evaluate (the layers below); not diffusion, which sits on the
same layer.
"""
