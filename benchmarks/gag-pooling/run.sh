#!/bin/bash
# The `attention` row of docs/gag-ablations.md ("Slot pooling"): trajectory stores from the demo's
# SFT experts, Stage III with the shipped preset (pooling: attention), dev EM with the controls.
# Run after `make demo`; the `stored` row is the same with injector.pooling=stored on the demo's
# stores. attention_<domain>.jsonl here are the measured rows (with the first foundation models).
set -e
cd "$(dirname "$0")/../.."; source .venv/bin/activate
D=outputs/demo; W=$D/world/world; R=${OUT:-outputs/bench/gag-pooling}; B=assets/foundation/tiny/base
one() {
  dom=$1
  kinject memory build --config configs/gag/${dom}_memory_tiny.yaml expert=$D/expert/${dom}_sft out=$R/$dom/mem \
    keep_trajectories=true "questions=[$W/${dom}_domain/qa_train.jsonl, $W/${dom}_domain/qa_dev.jsonl]"
  kinject memory build --config configs/gag/${dom}_align_memory_tiny.yaml expert=$D/expert/${dom}_sft out=$R/$dom/align \
    keep_trajectories=true "questions=[$W/general/align.jsonl]" limit=5000
  kinject gag train --config configs/gag/${dom}_stage3_tiny.yaml base=$B out=$R/$dom/gag \
    alignment.data=$W/general/align.jsonl alignment.memory=$R/$dom/align alignment.steps=2000 \
    domain.data=$W/${dom}_domain/qa_train.jsonl domain.memory=$R/$dom/mem
  kinject gag eval --injector $R/$dom/gag/injector --base $B --memory $R/$dom/mem \
    --data $W/${dom}_domain/qa_dev.jsonl --out $R/$dom/eval --dataset $dom --split dev
}
mkdir -p $R
one materials > $R/materials.log 2>&1 &
one adjuvant > $R/adjuvant.log 2>&1 &
wait
