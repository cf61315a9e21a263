"""Random-shift augmentation (vlambpo_jax/data/augment.py) against numpy's edge padding."""
import jax
import numpy as np

from vlambpo_jax.data import augment


def test_random_shift_is_an_edge_padded_crop_at_a_uniform_offset():
    pad, (b, v, h, w, c) = 2, (64, 2, 6, 7, 3)
    images = np.random.default_rng(0).integers(0, 256, (b, v, h, w, c), dtype=np.uint8)
    out = np.asarray(augment.random_shift(jax.random.key(1), images, pad))
    assert out.shape == images.shape and out.dtype == images.dtype
    seen = set()
    for i in range(b):
        for j in range(v):
            padded = np.pad(images[i, j], ((pad, pad), (pad, pad), (0, 0)), mode="edge")
            matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                       if np.array_equal(padded[dy:dy + h, dx:dx + w], out[i, j])]
            assert len(matches) == 1, (i, j, matches)   # random pixels: only one offset can match
            seen.add(matches[0])
    assert len(seen) == (2 * pad + 1) ** 2          # 128 draws reach all 25 offsets
    assert not np.array_equal(out, images)


def test_random_shift_without_pad_is_the_identity():
    images = np.arange(2 * 2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 2, 4, 4, 3)
    np.testing.assert_array_equal(augment.random_shift(jax.random.key(0), images, 0), images)
