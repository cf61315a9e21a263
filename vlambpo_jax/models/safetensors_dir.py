"""Reads a Hugging Face-style checkpoint directory's weights (every *.safetensors file in it) with
safetensors.numpy, so no PyTorch is needed."""
from __future__ import annotations

import glob
import os
import re

import numpy as np
from safetensors.numpy import load_file


def read_safetensors(path: str, what: str, skip: str = "") -> dict[str, np.ndarray]:
    """All tensors of <path>/*.safetensors by name, except files whose name matches the regex `skip`;
    `what` names the checkpoint in the error."""
    files = sorted(f for f in glob.glob(os.path.join(path, "*.safetensors"))
                   if not (skip and re.match(skip, os.path.basename(f))))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {what} checkpoint directory {path!r}")
    out = {}
    for f in files:
        out.update(load_file(f))
    return out
