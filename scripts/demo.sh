#!/usr/bin/env bash
# `make demo`: the whole pipeline on the built-in Lorenz dataset with the small CPU preset.
# simulate -> fit-ae (+ spike history) -> fit-diffusion -> sample -> evaluate (+ HTML report).
# Everything goes to demo_out/ (the shipped models/ folder is left alone).
set -euo pipefail
OUT="${DEMO_OUT:-demo_out}"
TRIALS="${DEMO_TRIALS:-1000}"
SEED="${DEMO_SEED:-0}"
mkdir -p "$OUT"
start=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - start )) s)" >&2; }

step "1/5 simulate the Lorenz benchmark ($TRIALS trials x 256 bins x 128 neurons)"
ldns simulate lorenz --trials "$TRIALS" --seed "$SEED" -o "$OUT/lorenz.nwb" --force
ldns inspect "$OUT/lorenz.nwb"

step "2/5 fit the S4 autoencoder (+ spike-history model)"
ldns fit-ae "$OUT/lorenz.nwb" -m "$OUT/models" --preset small --seed "$SEED" --force

step "3/5 fit the latent diffusion model"
ldns fit-diffusion "$OUT/lorenz.nwb" -m "$OUT/models" --preset small --seed "$SEED" --force

step "4/5 sample new spike trains (DPM-Solver++, 20 steps)"
ldns sample -m "$OUT/models" -n 200 --length 256 --seed "$SEED" -o "$OUT/samples.nwb" --force

step "5/5 evaluate samples against held-out trials and write the report"
ldns evaluate "$OUT/lorenz.nwb" "$OUT/samples.nwb" -m "$OUT/models" --reference-trials test \
    --report "$OUT/report" --force

total=$(( $(date +%s) - start ))
cat >&2 <<MSG

Done in ${total} s.
  report:   $OUT/report/index.html
  models:   $OUT/models/ (ae.safetensors, history.safetensors, diffusion.safetensors,
            and the per-epoch training logs ae_training.csv, diffusion_training.csv)
  samples:  $OUT/samples.nwb
Next:
  ldns sample -m $OUT/models -n 64 --length 4096 -o long.nwb      # 16x the training length
  ldns sample --length 140 --condition angle=0.5 -o reach.nwb      # shipped reach model in models/
  ldns fit-ae your_recording.nwb -m my_models --align move_onset_time --window -0.25 0.45 --bin-ms 5
MSG
