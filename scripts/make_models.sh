#!/usr/bin/env bash
# `make models`: rebuild the shipped demo checkpoints, deterministically (fixed seeds, 1 thread).
#   models/         angle-conditioned reach model (ae + history + diffusion): the default folder,
#                   so `ldns sample --length 1024 --condition angle=0.5 -o out.nwb` works after install
#   models/lorenz/  unconditional Lorenz model
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
SEED=0

echo "== reach (angle-conditioned)" >&2
ldns simulate reach --seed "$SEED" -o "$WORK/reach.h5" --force
ldns fit-ae "$WORK/reach.h5" -m "$WORK/reach" --preset small --seed "$SEED" --device cpu
ldns fit-diffusion "$WORK/reach.h5" -m "$WORK/reach" --preset small --condition angle \
    --seed "$SEED" --device cpu

echo "== lorenz (unconditional)" >&2
ldns simulate lorenz --trials 1000 --seed "$SEED" -o "$WORK/lorenz.h5" --force
ldns fit-ae "$WORK/lorenz.h5" -m "$WORK/lorenz" --preset small --seed "$SEED" --device cpu
ldns fit-diffusion "$WORK/lorenz.h5" -m "$WORK/lorenz" --preset small --seed "$SEED" --device cpu

mkdir -p models/lorenz
for f in ae history diffusion; do
    cp "$WORK/reach/$f.safetensors" "models/$f.safetensors"
    cp "$WORK/lorenz/$f.safetensors" "models/lorenz/$f.safetensors"
done
du -sh models >&2
sha256sum models/*.safetensors models/lorenz/*.safetensors >&2
