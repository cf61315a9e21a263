"""Small synthetic episodes in the writer's layout, for tests and examples (no simulator needed)."""
from __future__ import annotations

import numpy as np


def synthetic_episode(rng: np.random.Generator, T: int, *, image_keys=("image_0", "image_1"),
                      image_shape=(8, 8, 3), instruction: str | list[str] = "pick up the cube",
                      success: bool = True, state_dim: int = 7, action_dim: int = 7,
                      metadata: dict | None = None) -> dict:
    """One random episode of T steps: random uint8 views, float32 state/action, reward 1 at the end
    when success. Returns the dict rlds_writer.write_rlds takes."""
    obs = {k: rng.integers(0, 256, size=(T, *image_shape), dtype=np.uint8) for k in image_keys}
    obs["state"] = rng.normal(size=(T, state_dim)).astype(np.float32)
    reward = np.zeros((T,), np.float32)
    if success and T:
        reward[-1] = 1.0
    steps = np.arange(T)
    return {
        "steps": {
            "observation": obs,
            "action": rng.normal(size=(T, action_dim)).astype(np.float32),
            "language_instruction": instruction,
            "reward": reward,
            "discount": np.ones((T,), np.float32),
            "is_first": steps == 0,
            "is_last": steps == T - 1,
            "is_terminal": (steps == T - 1) & success,
        },
        "episode_metadata": dict(metadata or {"episode_id": 0, "success": bool(success)}),
    }
