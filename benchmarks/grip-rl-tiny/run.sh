#!/bin/bash
# usage: run.sh REWARD SEED
cd "$(git rev-parse --show-toplevel)"
D=$PWD/outputs/demo; mkdir -p ${RL_OUT:-outputs/grip-rl-tiny}
cfg=configs/grip/rl_tiny.yaml; train=$D/world/world/wiki/qa_train.jsonl
if [ "$1" = imitation ]; then cfg=configs/grip/rl_tiny_imitation.yaml; train=$D/grip/synth/rl.jsonl; fi
OMP_NUM_THREADS=1 .venv/bin/kinject grip rl --config $cfg --out ${RL_OUT:-outputs/grip-rl-tiny}/$1_s$2 \
  model=$D/grip/model data.train=$train retrieval.index=$D/retrieval/wiki_index \
  "eval.files=[$D/world/world/wiki/qa_test.jsonl]" optim.max_steps=40 seed=$2 > ${RL_OUT:-outputs/grip-rl-tiny}/$1_s$2.log 2>&1
echo "$1 $2 rc=$?"
