"""GAG memory construction, as in the GAG paper.

spec.py        the background spec (system prompt, request, length cap): recorded in the store and
               the injector, used by every online path
background.py  expert background generation + multi-layer hidden states per generated token
layers.py      layer keys (`last`, `minusK`) -> `hidden_states` indices
compress.py    slot compression (`segment_softmax`, `adaptive_avg`) and stabilization
store.py       the memory store: safetensors shards [N, L, S, d] + JSONL index (+ optional
               per-token trajectories for learned pooling)
build.py       `kinject memory build`: resumable, `rank::world_size` sharding, merge
domains.py     a world's private domains: each domain's store and alignment store, built once per inputs
"""
