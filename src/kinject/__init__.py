"""kinject: inject private, fast-changing domain knowledge into frozen LLMs.

Two systems on one code path: GAG (Generation-Augmented Generation, with PPR routing) and
GRIP (Retrieval as Generation). See README.md and the specs in the repository.
"""

__version__ = "0.1.0"

import os as _os

# Weights and datasets load from local paths only: a hub name must fail fast, never download.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
