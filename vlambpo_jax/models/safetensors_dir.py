"""Reads a Hugging Face-style checkpoint directory's weights (every *.safetensors file in it) with
safetensors.numpy, so no PyTorch is needed; checks imported parameters against the model's."""
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


def check_params(params: dict, reference: dict, what: str, path: str = "") -> None:
    """Every imported array has the shape the config's model (`reference`: its params or eval_shape)
    expects, and no parameter is left out or added; `what` names the checkpoint kind in the error."""
    for key in reference.keys() | params.keys():
        name = f"{path}/{key}"
        if key not in params:
            raise KeyError(f"{what} import: nothing in the checkpoint for parameter {name!r}")
        if key not in reference:
            raise ValueError(f"{what} import: {name!r} is not a parameter of this model (config sizes differ?)")
        if isinstance(reference[key], dict):
            check_params(params[key], reference[key], what, name)
        elif tuple(np.shape(params[key])) != tuple(reference[key].shape):
            raise ValueError(f"{what} import: {name!r} has shape {tuple(np.shape(params[key]))} in the "
                             f"checkpoint, the config's model expects {tuple(reference[key].shape)}")
