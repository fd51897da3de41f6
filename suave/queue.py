"""FIFO queue of past embeddings per assignment crop (SwAV), stored as a module buffer."""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingQueue(nn.Module):
    """``num_views`` queues of ``length`` L2-normalised embeddings (this rank's share).

    Empty slots are all-zero rows; only filled rows are used, so a queue in warm-up never feeds
    zero vectors into Sinkhorn-Knopp. The buffers are part of ``state_dict``: a resumed run
    continues with the same queue.
    """

    def __init__(self, num_views: int, length: int, dim: int):
        super().__init__()
        self.register_buffer("embeddings", torch.zeros(num_views, length, dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        # host copy of ``filled``: read back from the device once, not at every step (a sync)
        self._count: int | None = 0

    def count(self) -> int:
        """Filled rows (the buffer is read back only after a state load)."""
        if self._count is None:
            self._count = int(self.filled)
        return self._count

    def set_filled(self, rows: int) -> None:
        self.filled.fill_(rows)
        self._count = rows

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._count = None  # a loaded ``filled`` is read again on next use

    @property
    def length(self) -> int:
        return self.embeddings.shape[1]

    def get(self, view: int) -> torch.Tensor:
        return self.embeddings[view, : self.count()]

    @torch.no_grad()
    def push(self, per_view: list[torch.Tensor]) -> None:
        """Insert the newest embeddings at the front, dropping the oldest."""
        batch = per_view[0].shape[0]
        if self.length == 0:
            return
        if batch >= self.length:
            for v, emb in enumerate(per_view):
                self.embeddings[v] = emb[: self.length].to(self.embeddings.dtype)
        else:
            self.embeddings[:, batch:] = self.embeddings[:, :-batch].clone()
            for v, emb in enumerate(per_view):
                self.embeddings[v, :batch] = emb.to(self.embeddings.dtype)
        self.set_filled(min(self.count() + batch, self.length))
