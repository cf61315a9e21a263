"""Multi-view rendering in pure JAX: an analytic ray caster over the scene's boxes and cylinders.

Written by hand because no library renders MJX state in JAX at these speeds on a CPU: mjx.ray over a
vmap reached 200-500 two-view frames/s, the Warp renderer needs an extra toolchain, native MuJoCo needs
OpenGL and leaves jit. Here every pixel's ray is tested against every rendered geom in the geom's local
frame (a box: slab test; a cylinder: the interval where the ray is inside the infinite cylinder,
a quadratic, intersected with the slab between the caps), the nearest hit is kept, then shaded
Lambertian from one directional light, with an optional hard shadow ray. Only pose arrays go in
(geom_xpos, geom_xmat, cam_xpos, cam_xmat), never the whole mjx.Data; camera ray directions are
constants of the renderer.

Conventions match MuJoCo: a camera looks along its frame's -z with x right and y up; fovy is the
vertical field of view; pixel (row i, col j) has its ray through the centre of the pixel.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

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


def _safe_inv(x):
    return 1.0 / jnp.where(jnp.abs(x) < 1e-9, 1e-9, x)


def box_interval(origin_l, dirs_l, half):
    """Parameter interval (t_near, t_far) of a ray inside a box centred at the origin of its frame
    (slab test); t_near > t_far where the ray misses. origin_l, dirs_l, half broadcast over [..., 3]."""
    inv = _safe_inv(dirs_l)
    t1 = (-half - origin_l) * inv
    t2 = (half - origin_l) * inv
    return jnp.max(jnp.minimum(t1, t2), axis=-1), jnp.min(jnp.maximum(t1, t2), axis=-1)


def cylinder_interval(origin_l, dirs_l, radius, half_height):
    """Parameter interval (t_near, t_far) of a ray inside a cylinder along its frame's z (centred at the
    origin): the roots of |o_xy + t d_xy|^2 = r^2 intersected with the slab |o_z + t d_z| <= h.
    t_near > t_far where the ray misses. origin_l, dirs_l [..., 3]; radius, half_height broadcast [...]."""
    ox, oy, oz = origin_l[..., 0], origin_l[..., 1], origin_l[..., 2]
    dx, dy, dz = dirs_l[..., 0], dirs_l[..., 1], dirs_l[..., 2]
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - radius * radius
    disc = b * b - a * c
    sq = jnp.sqrt(jnp.maximum(disc, 0.0))
    inv_a = 1.0 / jnp.maximum(a, 1e-12)
    parallel = a < 1e-12            # along the axis: inside the infinite cylinder for all t, or never
    t0 = jnp.where(parallel, jnp.where(c <= 0, -jnp.inf, jnp.inf), (-b - sq) * inv_a)
    t1 = jnp.where(parallel, jnp.where(c <= 0, jnp.inf, -jnp.inf), (-b + sq) * inv_a)
    miss = (disc < 0) & ~parallel
    inv_z = _safe_inv(dz)
    z1 = (-half_height - oz) * inv_z
    z2 = (half_height - oz) * inv_z
    t_near = jnp.maximum(t0, jnp.minimum(z1, z2))
    t_far = jnp.minimum(t1, jnp.maximum(z1, z2))
    return jnp.where(miss, jnp.inf, t_near), jnp.where(miss, -jnp.inf, t_far)


class Renderer:
    """Renders the named cameras of a MuJoCo model from pose arrays. Pure function of its inputs.

    Args:
      model: the mujoco.MjModel (only read here, for geom sizes/colours and camera fovy).
      cameras: camera names in output order (e.g. ("head", "wrist")).
      height, width: image size in pixels.
      geoms: names of the geoms to draw (others are ignored); boxes or cylinders.
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
        geoms = list(geoms)
        self.geom_ids = np.array([model.geom(n).id for n in geoms], np.int32)
        types = model.geom_type[self.geom_ids]
        box, cyl = int(mujoco.mjtGeom.mjGEOM_BOX), int(mujoco.mjtGeom.mjGEOM_CYLINDER)
        bad = [n for n, t in zip(geoms, types) if int(t) not in (box, cyl)]
        if bad:
            raise ValueError(f"renderer: geoms {bad} are neither boxes nor cylinders; only those are supported")
        self.is_cylinder = types == cyl                                          # [G]
        self.cam_ids = np.array([model.camera(n).id for n in self.cameras], np.int32)
        self.fovy = tuple(float(model.cam_fovy[i]) for i in self.cam_ids)
        size = model.geom_size[self.geom_ids].astype(np.float32)
        # Box half extents; a cylinder (size = radius, half height) as its bounding box (r, r, h).
        self.half = np.where(self.is_cylinder[:, None], size[:, [0, 0, 1]], size)  # [G, 3]
        self.default_rgb = model.geom_rgba[self.geom_ids, :3].astype(np.float32)  # [G, 3]
        self.rays = np.stack([camera_rays(f, self.height, self.width) for f in self.fovy])  # [C, P, 3]
        casters = list(geoms[1:]) if shadow_casters is None else list(shadow_casters)
        self.caster_index = np.array([geoms.index(n) for n in casters], np.int32)
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

    def _intervals(self, sel, origin_l, dirs_l):
        """(t_near, t_far) [..., len(sel), P] of rays against the drawn geoms `sel` (numpy indices into
        `geoms`, all of one kind). origin_l [..., len(sel), 1 or P, 3], dirs_l [..., len(sel), P, 3]."""
        half = self.half[sel][:, None, :]
        if self.is_cylinder[sel[0]]:
            return cylinder_interval(origin_l, dirs_l, half[..., 0], half[..., 2])
        return box_interval(origin_l, dirs_l, half)

    def _groups(self, index):
        """`index` (numpy indices into `geoms`) split by kind: a list of (positions in index, sel)."""
        out = []
        for kind in (False, True):
            pos = np.nonzero(self.is_cylinder[index] == kind)[0]
            if len(pos):
                out.append((pos, np.asarray(index)[pos]))
        return out

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
        # Per kind of geom, into each geom frame: x_local = R^T (x - p); entry distance of every ray.
        ts, order = [], []
        for _, sel in self._groups(np.arange(len(gid))):
            origin_l = self._rotate_t(mat[sel][None], cpos[:, None, :] - pos[sel][None])  # [C, g, 3]
            dirs_l = self._rotate_t(mat[sel][None, :, None], dirs[:, None])              # [C, g, P, 3]
            t_near, t_far = self._intervals(sel, origin_l[:, :, None, :], dirs_l)
            ts.append(jnp.where((t_near <= t_far) & (t_near > 1e-4), t_near, jnp.inf))   # [C, g, P]
            order.append(sel)
        t = ts[0] if len(ts) == 1 else jnp.concatenate(ts, axis=1)                   # [C, G, P]
        order = np.concatenate(order).astype(np.int32)
        t_min = jnp.min(t, axis=1)                                                   # [C, P]
        idx = jnp.asarray(order)[jnp.argmin(t, axis=1)]
        hit = jnp.isfinite(t_min)
        # Materialise the hit buffer once; otherwise XLA may fuse the whole cast into the per-channel
        # output loop and redo it for each colour channel.
        t_min, idx, hit = jax.lax.optimization_barrier((t_min, idx, hit))
        t_safe = jnp.where(hit, t_min, 0.0)
        point = cpos[:, None, :] + t_safe[..., None] * dirs                          # [C, P, 3]
        # Normal of the winning geom. Box: the local axis where the hit point is closest to the face.
        # Cylinder: the cap normal where the point is relatively closer to a cap than to the side,
        # else radial.
        m_hit = mat[idx]                                                             # [C, P, 3, 3]
        local = self._rotate_t(m_hit, point - pos[idx]) / half[idx]
        axis = jnp.argmax(jnp.abs(local), axis=-1)
        n_box = jax.nn.one_hot(axis, 3, dtype=jnp.float32) * jnp.sign(local)
        if self.is_cylinder.any():
            rho = jnp.sqrt(local[..., 0] ** 2 + local[..., 1] ** 2)
            cap = jnp.abs(local[..., 2]) >= rho
            radial = local * jnp.array([1.0, 1.0, 0.0]) / jnp.maximum(rho, 1e-6)[..., None]
            n_cyl = jnp.where(cap[..., None], jnp.array([0.0, 0.0, 1.0]) * jnp.sign(local), radial)
            n_local = jnp.where(jnp.asarray(self.is_cylinder)[idx][..., None], n_cyl, n_box)
        else:
            n_local = n_box
        normal = self._rotate(m_hit, n_local)
        light = jnp.asarray(self.light)
        lambert = jnp.maximum(normal @ light, 0.0)                                   # [C, P]
        if self.shadows:
            start = point + 1e-3 * normal
            blocked = jnp.zeros(lambert.shape, bool)
            for _, sel in self._groups(self.caster_index):
                origin_s = self._rotate_t(mat[sel], start[:, :, None, :] - pos[sel])     # [C, P, g, 3]
                dir_s = self._rotate_t(mat[sel], jnp.broadcast_to(light, (len(sel), 3)))  # [g, 3] local
                half_s = self.half[sel]
                if self.is_cylinder[sel[0]]:
                    t_near, t_far = cylinder_interval(origin_s, dir_s, half_s[:, 0], half_s[:, 2])
                else:
                    t_near, t_far = box_interval(origin_s, dir_s, half_s)
                blocked = blocked | jnp.any((t_near <= t_far) & (t_far > 1e-4), axis=-1)
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
