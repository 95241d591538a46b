"""PPR: prototype-based plug-and-play routing (the GAG paper's PPR; see docs/design.md).

- `encoders`: the `Encoder` protocol and its backends (`hf-mean`, `sentence-transformers`).
- `banks`: per-domain prototype banks (k-means centroids) and the banks directory.
- `router`: nearest-prototype routing with an optional margin rule.
- `evaluate`, `bench`: routing accuracy / confusion matrix, throughput.
"""
