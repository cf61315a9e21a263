"""Writing a small file so that readers see either the old text or the new, never part of it."""
from __future__ import annotations

import os

from etils import epath


def write_text_atomic(path, text: str) -> epath.Path:
    """Writes text to a temporary file beside path (local or gs://; named per OS process, so two
    processes writing one path never share it), then moves it over path; returns path."""
    path = epath.Path(path)
    tmp = path.parent / f"{path.name}.tmp{os.getpid()}"
    tmp.write_text(text)
    tmp.replace(path)
    return path
