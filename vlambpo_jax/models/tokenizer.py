"""Text tokenizers: a built-in byte-level tokenizer and an adapter for local Hugging Face tokenizers.

Both map a string to fixed-length int32 ids plus a bool validity mask, so batches have static shapes.
"""
from __future__ import annotations

import numpy as np


class ByteTokenizer:
    """UTF-8 bytes shifted by the special ids; needs no files.

    ids: 0 = pad, 1 = bos, 2 = eos, 3 + byte for each byte.
    """
    pad_id, bos_id, eos_id = 0, 1, 2
    vocab_size = 3 + 256

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (ids int32[max_len], mask bool[max_len]); text longer than fits is cut."""
        body = [3 + b for b in text.encode("utf-8")][: max_len - 2]
        ids = [self.bos_id] + body + [self.eos_id]
        out = np.full((max_len,), self.pad_id, np.int32)
        out[: len(ids)] = ids
        mask = np.zeros((max_len,), bool)
        mask[: len(ids)] = True
        return out, mask

    def decode(self, ids) -> str:
        return bytes(int(i) - 3 for i in ids if int(i) >= 3).decode("utf-8", errors="replace")

    def encode_batch(self, texts, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (ids int32[B, max_len], mask bool[B, max_len])."""
        pairs = [self.encode(t, max_len) for t in texts]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
