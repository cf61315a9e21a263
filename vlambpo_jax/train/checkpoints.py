"""Orbax checkpoints with three items: `train_state`, `params` (loadable alone) and `assets` (JSON).

Resume walks back from the newest step to the first one that restores intact against the expected
structure, so an interrupted or corrupted newest checkpoint costs one save interval, never a crash or
silently wrong parameters (orbax alone counts an empty or partial step directory as the latest and can
restore it as an empty result).
"""
from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from vlambpo_jax.train import sharding

log = logging.getLogger(__name__)

ITEMS = ("train_state", "params", "assets")


class CheckpointError(RuntimeError):
    pass


def _dir(path) -> epath.Path:
    """Local paths made absolute (orbax requires it); remote ones (gs://...) kept as they are."""
    return epath.Path(path) if "://" in str(path) else epath.Path(str(path)).resolve()


def _same_structure(restored: Any, target: Any) -> bool:
    if jax.tree_util.tree_structure(restored) != jax.tree_util.tree_structure(target):
        return False
    return all(np.shape(a) == np.shape(b) and np.asarray(a).dtype == np.asarray(b).dtype
               for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(target)))


class Checkpointer:
    """Saves and restores one training run's checkpoints in `directory`.

    save(step, train_state, params, assets): params is what inference needs (e.g. EMA params);
    assets is a JSON-able dict (config, normalization stats, tokenizer description).
    """

    def __init__(self, directory, keep: int = 3, async_save: bool = True):
        self.directory = _dir(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def save(self, step: int, train_state: Any, params: Any, assets: dict | None = None,
             force: bool = False) -> None:
        args = ocp.args.Composite(
            train_state=ocp.args.StandardSave({"tree": train_state}),
            params=ocp.args.StandardSave({"tree": params}),
            assets=ocp.args.JsonSave(assets or {}))
        self._manager.save(step, args=args, force=force)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps(), reverse=True)

    def restore(self, train_state_target: Any) -> tuple[int, Any, dict] | None:
        """Newest intact (step, train_state, assets), or None when there is no checkpoint."""
        self._manager.wait_until_finished()
        for step in self.steps():
            try:
                out = self._manager.restore(step, args=ocp.args.Composite(
                    train_state=ocp.args.StandardRestore({"tree": train_state_target}),
                    assets=ocp.args.JsonRestore()))
                state = (out["train_state"] or {}).get("tree")
                if state is None or not _same_structure(state, train_state_target):
                    raise CheckpointError("restored train_state does not match the expected structure")
                return step, state, dict(out["assets"] or {})
            except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
                log.warning("checkpoint step %d in %s is unreadable (%s: %s); trying an older one",
                            step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
        if self.steps():
            log.warning("no intact checkpoint in %s; starting from scratch", self.directory)
        return None

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def load_params(directory, params_target: Any | None = None,
                step: int | None = None, item: str = "params") -> tuple[Any, dict]:
    """Loads (params, assets) for inference from the newest intact step (or `step`).

    Without a target the arrays come back as numpy in the saved tree structure. item 'train_state'
    reads the training state instead (e.g. the SFT grounding head, which inference does not keep).
    """
    directory = _dir(directory)
    manager = ocp.CheckpointManager(directory, item_names=ITEMS)
    steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
    errors = []
    for s in steps:
        try:
            restore = (ocp.args.StandardRestore({"tree": params_target}) if params_target is not None
                       else ocp.args.StandardRestore())
            out = manager.restore(s, args=ocp.args.Composite(**{item: restore},
                                                             assets=ocp.args.JsonRestore()))
            params = (out[item] or {}).get("tree")
            if params is None or not jax.tree_util.tree_leaves(params):
                raise CheckpointError("empty params")
            if params_target is not None and not _same_structure(params, params_target):
                raise CheckpointError("params do not match the expected structure")
            manager.close()
            if params_target is None:
                # With several processes orbax restores onto every device of every process; such
                # arrays cannot be mixed with this process's own in one computation.
                params = sharding.to_host(params)
            return params, dict(out["assets"] or {})
        except Exception as e:  # noqa: BLE001
            errors.append(f"step {s}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            log.warning("cannot load params from %s %s", directory, errors[-1])
    manager.close()
    raise CheckpointError(f"no loadable checkpoint in {directory}" +
                          (": " + "; ".join(errors) if errors else " (no steps)"))
