"""Multi-view rendering in pure JAX: an analytic ray caster over the scene's boxes.

Written by hand because no library renders MJX state in JAX at these speeds on a CPU: mjx.ray over a
vmap reached 200-500 two-view frames/s, the Warp renderer needs an extra toolchain, native MuJoCo needs
OpenGL and leaves jit. Here every pixel's ray is tested against every rendered box in the box's local
frame (slab test), the nearest hit is kept, then shaded Lambertian from one directional light, with an
optional hard shadow ray. Only pose arrays go in (geom_xpos, geom_xmat, cam_xpos, cam_xmat), never the
whole mjx.Data; camera ray directions are constants of the renderer.

Conventions match MuJoCo: a camera looks along its frame's -z with x right and y up; fovy is the
vertical field of view; pixel (row i, col j) has its ray through the centre of the pixel.
"""
from __future__ import annotations

import mujoco
import numpy as np
import jax
import jax.numpy as jnp

BACKGROUND_TOP = np.array([0.62, 0.72, 0.85], np.float32)
BACKGROUND_BOTTOM = np.array([0.30, 0.30, 0.32], np.float32)


def camera_rays(fovy_deg: float, height: int, width: int) -> np.ndarray:
    """Unit ray directions in the camera frame, [H*W, 3] float32, row-major over (row, col)."""
    t = np.tan(np.deg2rad(fovy_deg) / 2.0)
    half_h = height / 2.0
    cols = (np.arange(width) + 0.5 - width / 2.0) / half_h * t
    rows = -(np.arange(height) + 0.5 - half_h) / half_h * t
    x, y = np.meshgrid(cols, rows)
    d = np.stack([x, y, -np.ones_like(x)], -1).reshape(-1, 3)
    return (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)


def project(point, cam_pos, cam_mat, fovy_deg: float, height: int, width: int):
    """World point -> (row, col) pixel coordinates (continuous; pixel centres at .5). numpy or jnp."""
    local = (point - cam_pos) @ cam_mat.reshape(3, 3)   # = R^T (p - c)
    t = np.tan(np.deg2rad(fovy_deg) / 2.0)
    half_h = height / 2.0
    col = local[..., 0] / -local[..., 2] / t * half_h + width / 2.0
    row = -local[..., 1] / -local[..., 2] / t * half_h + half_h
    return row, col


class Renderer:
    """Renders the named cameras of a MuJoCo model from pose arrays. Pure function of its inputs.

    Args:
      model: the mujoco.MjModel (only read here, for geom sizes/colours and camera fovy).
      cameras: camera names in output order (e.g. ("head", "wrist")).
      height, width: image size in pixels.
      geoms: names of the box geoms to draw (others are ignored); all must be boxes.
      shadow_casters: names of the geoms that cast shadows (default: all drawn geoms but the first).
      light_dir: direction *towards* the light (world frame).
      ambient: share of light that reaches surfaces facing away from the light or in shadow.
      shadows: cast hard shadows (one extra ray per pixel).
    """

    def __init__(self, model: mujoco.MjModel, cameras, height: int, width: int, geoms,
                 shadow_casters=None, light_dir=(0.35, -0.25, 1.0), ambient: float = 0.35,
                 shadows: bool = True):
        self.height, self.width = int(height), int(width)
        self.cameras = tuple(cameras)
        self.geom_ids = np.array([model.geom(n).id for n in geoms], np.int32)
        bad = [n for n, i in zip(geoms, self.geom_ids) if model.geom_type[i] != mujoco.mjtGeom.mjGEOM_BOX]
        if bad:
            raise ValueError(f"renderer: geoms {bad} are not boxes; only boxes are supported")
        self.cam_ids = np.array([model.camera(n).id for n in self.cameras], np.int32)
        self.fovy = tuple(float(model.cam_fovy[i]) for i in self.cam_ids)
        self.half = model.geom_size[self.geom_ids].astype(np.float32)            # [G, 3]
        self.default_rgb = model.geom_rgba[self.geom_ids, :3].astype(np.float32)  # [G, 3]
        self.rays = np.stack([camera_rays(f, self.height, self.width) for f in self.fovy])  # [C, P, 3]
        casters = list(geoms[1:]) if shadow_casters is None else list(shadow_casters)
        self.caster_index = np.array([list(geoms).index(n) for n in casters], np.int32)
        light = np.asarray(light_dir, np.float32)
        self.light = light / np.linalg.norm(light)
        self.ambient = float(ambient)
        self.shadows = bool(shadows)

    @staticmethod
    def _rotate_t(mat, v):
        """R^T v for 3x3 R, written as broadcast multiply-adds (not a dot) so XLA fuses it with the
        surrounding elementwise work instead of materialising [.., 3] intermediates through a GEMM.
        mat [..., 3, 3] and v [..., 3] broadcast against each other."""
        return (mat[..., 0, :] * v[..., 0:1] + mat[..., 1, :] * v[..., 1:2] + mat[..., 2, :] * v[..., 2:3])

    @staticmethod
    def _rotate(mat, v):
        """R v, as _rotate_t."""
        return (mat[..., :, 0] * v[..., 0:1] + mat[..., :, 1] * v[..., 1:2] + mat[..., :, 2] * v[..., 2:3])

    @staticmethod
    def _slab(origin_l, dirs_l, half):
        """Ray-box entry distance in box frames. origin_l [..., G, 3], dirs_l [..., G, P, 3],
        half [G, 3] -> t [..., G, P] (inf where the ray misses or starts inside the box)."""
        inv = 1.0 / jnp.where(jnp.abs(dirs_l) < 1e-9, 1e-9, dirs_l)
        o = origin_l[..., None, :]
        h = half[:, None, :]
        t1 = (-h - o) * inv
        t2 = (h - o) * inv
        t_near = jnp.max(jnp.minimum(t1, t2), axis=-1)
        t_far = jnp.min(jnp.maximum(t1, t2), axis=-1)
        hit = (t_near <= t_far) & (t_near > 1e-4)
        return jnp.where(hit, t_near, jnp.inf)

    def __call__(self, geom_xpos, geom_xmat, cam_xpos, cam_xmat, rgb=None, return_ids: bool = False):
        """Renders one state.

        Args:
          geom_xpos: [ngeom, 3] world positions of all model geoms (mjx Data.geom_xpos).
          geom_xmat: [ngeom, 3, 3] (or [ngeom, 9]) world orientations.
          cam_xpos, cam_xmat: [ncam, 3], [ncam, 3, 3] (or [ncam, 9]) camera poses.
          rgb: [G, 3] float colours of the drawn geoms (default: the model's).
          return_ids: also return the index (into `geoms`) hit by each pixel, -1 for background.
        Returns:
          uint8 [C, H, W, 3] (and int32 [C, H, W] if return_ids).
        """
        gid = self.geom_ids
        pos = geom_xpos[gid]                                    # [G, 3]
        mat = geom_xmat.reshape(-1, 3, 3)[gid]                  # [G, 3, 3]
        cpos = cam_xpos[self.cam_ids]                           # [C, 3]
        cmat = cam_xmat.reshape(-1, 3, 3)[self.cam_ids]         # [C, 3, 3]
        rgb = jnp.asarray(self.default_rgb if rgb is None else rgb, jnp.float32)
        half = jnp.asarray(self.half)
        dirs = self._rotate(cmat[:, None], jnp.asarray(self.rays))                    # [C, P, 3] world
        # Into each box frame: x_local = R^T (x - p).
        origin_l = self._rotate_t(mat[None], cpos[:, None, :] - pos[None])           # [C, G, 3]
        dirs_l = self._rotate_t(mat[None, :, None], dirs[:, None])                    # [C, G, P, 3]
        t = self._slab(origin_l, dirs_l, half)                                       # [C, G, P]
        t_min = jnp.min(t, axis=1)                                                   # [C, P]
        idx = jnp.argmin(t, axis=1).astype(jnp.int32)
        hit = jnp.isfinite(t_min)
        # Materialise the hit buffer once; otherwise XLA may fuse the whole cast into the per-channel
        # output loop and redo it for each colour channel.
        t_min, idx, hit = jax.lax.optimization_barrier((t_min, idx, hit))
        t_safe = jnp.where(hit, t_min, 0.0)
        point = cpos[:, None, :] + t_safe[..., None] * dirs                          # [C, P, 3]
        # Face normal of the winning box: the local axis where the hit point is closest to the face.
        m_hit = mat[idx]                                                             # [C, P, 3, 3]
        local = self._rotate_t(m_hit, point - pos[idx]) / half[idx]
        axis = jnp.argmax(jnp.abs(local), axis=-1)
        n_local = jax.nn.one_hot(axis, 3, dtype=jnp.float32) * jnp.sign(local)
        normal = self._rotate(m_hit, n_local)
        light = jnp.asarray(self.light)
        lambert = jnp.maximum(normal @ light, 0.0)                                   # [C, P]
        if self.shadows:
            ci = self.caster_index
            start = point + 1e-3 * normal
            origin_s = self._rotate_t(mat[ci], start[:, :, None, :] - pos[ci])        # [C, P, Gs, 3]
            dir_s = self._rotate_t(mat[ci], jnp.broadcast_to(light, (len(ci), 3)))    # [Gs, 3] local
            inv = 1.0 / jnp.where(jnp.abs(dir_s) < 1e-9, 1e-9, dir_s)
            h = half[ci]
            t1 = (-h - origin_s) * inv
            t2 = (h - origin_s) * inv
            t_near = jnp.max(jnp.minimum(t1, t2), axis=-1)
            t_far = jnp.min(jnp.maximum(t1, t2), axis=-1)
            blocked = jnp.any((t_near <= t_far) & (t_far > 1e-4), axis=-1)          # [C, P]
            lambert = jnp.where(blocked, 0.0, lambert)
        shade = self.ambient + (1.0 - self.ambient) * lambert
        colour = rgb[idx] * shade[..., None]
        sky = jnp.clip(dirs[..., 2:3] * 2.0 + 0.5, 0.0, 1.0)
        background = BACKGROUND_BOTTOM + sky * (BACKGROUND_TOP - BACKGROUND_BOTTOM)
        colour = jnp.where(hit[..., None], colour, background)
        image = jnp.clip(colour * 255.0 + 0.5, 0, 255).astype(jnp.uint8)
        image = image.reshape(len(self.cam_ids), self.height, self.width, 3)
        if return_ids:
            ids = jnp.where(hit, idx, -1).reshape(len(self.cam_ids), self.height, self.width)
            return image, ids
        return image
