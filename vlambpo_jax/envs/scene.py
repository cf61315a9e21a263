"""The tabletop scene: our own MJCF (no third-party assets), built as a string from a few constants.

Layout (metres, world z up, table top at z = 0):
  - table: a collision plane (not rendered) plus a visual box (rendered, no collisions);
  - three free graspable objects of distinct colours and shapes (OBJECTS): a red cube (5 cm), an upright
    green cylinder (5 cm across, 7 cm tall) and a blue block lying flat (7 x 4 x 4 cm); tasks refer to
    them by colour and shape noun ("the green cylinder");
  - two flat target squares ("zones", half size ZONE_HALF), visual only, moved per episode (mocap);
  - a floating two-finger gripper: a free body "ee" whose origin is the tool centre point (the grasp
    point between the fingertips), welded to the mocap body "ee_target" that the actions move; two
    fingers on slide joints, driven by position actuators;
  - cameras: "head" fixed in the world, "wrist" fixed on the gripper (moves with it).

The cylinder is three geoms: a visual `cylinder` (what the renderer draws, no collisions), a convex mesh
prism with CYLINDER_SIDES = 8 sides circumscribing it (its faces touch the circle, its corners stand
2 mm out; collides with the fingers only) and a box "foot", the square prism inscribed in it (collides
with the table and the other objects). MJX (3.x/4.0, impl="jax") has no box-cylinder collision
function, and the fingers, the cube and the block are boxes. Box-mesh pairs (convex_convex, a separating
axis test over all edge pairs) are what the cylinder costs: with a 16-sided prism against fingers and
objects physics ran at ~45% of the all-box scene's steps/s; 8 sides against the fingers only, ~80%.
The foot carries the table contact because on a prism's polygonal base native MuJoCo and MJX pick
different 4-vertex contact sets, which left the resting cylinder tilted differently by ~1e-4 (the parity
test); MJX's plane-cylinder contacts differed from native ones too. Box-plane contacts agree to ~1e-8.
Objects pushed into the cylinder's side meet the foot, up to 7 mm inside the drawn surface.

Contact settings follow what made MJX grasping reliable on this machine (see DESIGN.md): sliding
friction >= 1, solref time constant 0.01, pyramidal cone, 4 solver and 4 line-search iterations,
zero contact margin. Newton solver with a sparse Jacobian: with dense matrices MJX factors the mass
matrix (twice per Euler step, once for implicit damping) with the LAPACK Cholesky kernel, and two such
batch-parallel calls running at once deadlocked this jaxlib's CPU runtime at batch >= 64; sparse
matrices use MJX's own factorization, leaving one Cholesky (Newton's) at a time. CG avoids Cholesky
altogether but needed 8 iterations to keep resting cubes still and then differed from native MuJoCo
by ~1e-2 in 50 steps (Newton: ~1e-7). Only the collision pairs the tasks need exist (contype/conaffinity
bits, *_BIT below): object-object, object-table, finger-object.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """One graspable object. shape 'box': size = half extents (x, y, z), x the long side if any;
    shape 'cylinder': size = (radius, half height), axis vertical when resting upright."""
    colour: str
    noun: str
    shape: str
    size: tuple[float, ...]
    rgb: tuple[float, float, float]

    @property
    def half_height(self) -> float:
        """Centre height above the table when resting upright (and half the object's height)."""
        return self.size[2] if self.shape == "box" else self.size[1]

    @property
    def grasp_width(self) -> float:
        """Widest finger gap while holding it: a box grasped across its narrow side; a cylinder across
        its collision prism, up to corner to corner (see CYLINDER_SIDES)."""
        if self.shape == "box":
            return 2 * min(self.size[0], self.size[1])
        return 2 * self.size[0] / float(np.cos(np.pi / CYLINDER_SIDES))

    @property
    def yaw_period(self) -> float:
        """Symmetry of the footprint under yaw, as the grasp sees it: pi/2 for a square box, pi for
        an oblong one (grasped across its short side), 0 = any yaw (a cylinder)."""
        if self.shape == "cylinder":
            return 0.0
        return float(np.pi / 2) if self.size[0] == self.size[1] else float(np.pi)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.noun}"


CYLINDER_SIDES = 8         # sides of the cylinder's collision prism (MJX convex cost ~ its edge count)

OBJECTS = (
    ObjectSpec("red", "cube", "box", (0.025, 0.025, 0.025), (0.85, 0.12, 0.10)),
    ObjectSpec("green", "cylinder", "cylinder", (0.025, 0.035), (0.10, 0.70, 0.15)),
    ObjectSpec("blue", "block", "box", (0.035, 0.02, 0.02), (0.12, 0.25, 0.90)),
)
NUM_OBJECTS = len(OBJECTS)
OBJECT_HALF_HEIGHT = np.array([o.half_height for o in OBJECTS], np.float32)
OBJECT_GRASP_WIDTH = np.array([o.grasp_width for o in OBJECTS], np.float32)
OBJECT_MASS = 0.05         # kg, each
# Collision bits (contype/conaffinity): boxes collide with boxes, fingers and the table; the cylinder's
# prism with the fingers; the cylinder's foot (the square prism inscribed in it) with the table and boxes.
BOX_BIT, PRISM_BIT, FOOT_BIT = 1, 2, 4
ZONE_HALF = 0.045          # target squares are 9 cm
NUM_ZONES = 2
FINGER_OPEN_HALF_GAP = 0.045   # inner finger faces at +-4.5 cm when fully open (9 cm gap)
FINGER_TRAVEL = 0.04           # each finger slides this far inward when fully closed (1 cm gap)
FINGER_HALF = (0.012, 0.006, 0.025)   # finger box half sizes (x along the gripper, y across, z)
FINGER_CENTER_Z = 0.015        # finger centre above the tool centre point: tips 1 cm below it
PALM_HALF = (0.018, 0.06, 0.008)
PALM_CENTER_Z = 0.048

ZONE_COLOURS = {"yellow": (0.95, 0.85, 0.10), "purple": (0.60, 0.20, 0.75)}
TABLE_RGB = (0.72, 0.60, 0.45)
GRIPPER_RGB = (0.30, 0.30, 0.33)
FINGER_RGB = (0.45, 0.45, 0.50)

HEAD_CAMERA = dict(pos=(0.36, 0.0, 0.36), target=(-0.03, 0.0, 0.0), fovy=52.0)
# In the gripper frame: behind and above the fingers, looking forward-down past the fingertips.
WRIST_CAMERA = dict(pos=(-0.075, 0.0, 0.03), target=(0.02, 0.0, -0.03), fovy=80.0)


def _xyaxes(pos, target) -> str:
    """MuJoCo camera frame (x right, y up, looking along -z) that looks from pos at target."""
    f = np.asarray(target, float) - np.asarray(pos, float)
    f /= np.linalg.norm(f)
    up = np.array([0.0, 0.0, 1.0])
    right = np.cross(f, up)
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, f)
    return " ".join(f"{v:.6f}" for v in (*right, *cam_up))


def _prism_vertices(radius: float, half_height: float, sides: int | None = None) -> np.ndarray:
    """Vertices of a regular prism circumscribing the cylinder (its faces touch the circle)."""
    sides = CYLINDER_SIDES if sides is None else sides
    a = 2 * np.pi * (np.arange(sides) + 0.5) / sides
    r = radius / np.cos(np.pi / sides)
    ring = np.stack([r * np.cos(a), r * np.sin(a)], -1)
    return np.concatenate([np.c_[ring, np.full(sides, -half_height)],
                           np.c_[ring, np.full(sides, half_height)]]).reshape(-1)


def _v(values) -> str:
    return " ".join(f"{float(v):.6g}" for v in values)


def scene_xml(timestep: float = 0.005, solver_iterations: int = 4, ls_iterations: int = 4,
              friction: float = 1.5, solref_timeconst: float = 0.01, grip_kp: float = 1000.0,
              grip_force: float = 40.0, weld_timeconst: float = 0.01, solver: str = "Newton",
              finger_damping: float = 20.0) -> str:
    """The MJCF of the scene. Arguments are the physics settings exposed in config.env.physics."""
    objects = []
    for i, o in enumerate(OBJECTS):
        x = -0.1 + 0.1 * i
        if o.shape == "box":
            geoms = (f'<geom name="obj{i}" type="box" size="{_v(o.size)}" mass="{OBJECT_MASS}" '
                     f'rgba="{_v(o.rgb)} 1" contype="{BOX_BIT}" conaffinity="{BOX_BIT}"/>')
        else:   # the cylinder (rendered) + its prism (touches fingers and boxes) + foot (touches the table)
            r, h = o.size
            geoms = (f'<geom name="obj{i}" type="cylinder" size="{_v(o.size)}" rgba="{_v(o.rgb)} 1" '
                     f'mass="0" contype="0" conaffinity="0"/>\n      '
                     f'<geom name="obj{i}_hull" type="mesh" mesh="prism{i}" group="3" mass="{OBJECT_MASS}" '
                     f'rgba="{_v(o.rgb)} 0" contype="{PRISM_BIT}" conaffinity="0"/>\n      '
                     f'<geom name="obj{i}_foot" type="box" size="{_v([r / np.sqrt(2)] * 2 + [h])}" group="3" '
                     f'mass="0" rgba="{_v(o.rgb)} 0" contype="{FOOT_BIT}" conaffinity="{BOX_BIT}"/>')
        objects.append(f"""
    <body name="obj{i}" pos="{x} 0.1 {o.half_height}">
      <freejoint name="obj{i}"/>
      {geoms}
    </body>""")
    meshes = "".join(f'\n    <mesh name="prism{i}" vertex="{_v(_prism_vertices(*o.size))}"/>'
                     for i, o in enumerate(OBJECTS) if o.shape == "cylinder")
    zones = []
    for i, name in enumerate(ZONE_COLOURS):
        zones.append(f"""
    <body name="zone{i}" mocap="true" pos="{-0.1 + 0.2 * i} -0.1 0">
      <geom name="zone{i}" type="box" size="{ZONE_HALF} {ZONE_HALF} 0.001" pos="0 0 0.001"
            rgba="{_v(ZONE_COLOURS[name])} 1" contype="0" conaffinity="0"/>
    </body>""")
    fy = FINGER_OPEN_HALF_GAP + FINGER_HALF[1]
    head, wrist = HEAD_CAMERA, WRIST_CAMERA
    return f"""
<mujoco model="vlambpo_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep}" iterations="{solver_iterations}" ls_iterations="{ls_iterations}"
          cone="pyramidal" integrator="Euler" solver="{solver}" jacobian="sparse"/>
  <visual><global offwidth="256" offheight="256"/></visual>
  <default>
    <geom friction="{friction} 0.005 0.0001" solref="{solref_timeconst} 1" margin="0"/>
  </default>
  <asset>
    <!-- mjx.ray needs at least one material in the model; harmless otherwise. -->
    <material name="matte" rgba="1 1 1 1"/>{meshes}
  </asset>
  <worldbody>
    <light name="sun" pos="0.3 -0.3 1.0" dir="-0.3 0.3 -1" directional="true"/>
    <camera name="head" pos="{_v(head['pos'])}" xyaxes="{_xyaxes(head['pos'], head['target'])}"
            fovy="{head['fovy']}"/>
    <geom name="table_plane" type="plane" size="0.5 0.5 0.01" rgba="0 0 0 0" group="3"
          contype="0" conaffinity="{BOX_BIT | FOOT_BIT}"/>
    <geom name="table" type="box" size="0.3 0.3 0.02" pos="0 0 -0.02" rgba="{_v(TABLE_RGB)} 1"
          contype="0" conaffinity="0" material="matte"/>
    {''.join(zones)}
    <!-- MJX places mocap bodies after the kinematic tree pass, so a mocap body's children would not
         follow it: the gripper is a free body welded to the (leaf) mocap body "ee_target". -->
    <body name="ee_target" mocap="true" pos="0 0 0.15"/>
    <body name="ee" pos="0 0 0.15">
      <freejoint name="ee"/>
      <geom name="palm" type="box" size="{_v(PALM_HALF)}" pos="0 0 {PALM_CENTER_Z}" mass="0.2"
            rgba="{_v(GRIPPER_RGB)} 1" contype="0" conaffinity="0"/>
      <camera name="wrist" pos="{_v(wrist['pos'])}"
              xyaxes="{_xyaxes(wrist['pos'], wrist['target'])}" fovy="{wrist['fovy']}"/>
      <body name="finger_l" pos="0 0 0">
        <joint name="finger_l" type="slide" axis="0 -1 0" range="0 {FINGER_TRAVEL}" damping="{finger_damping}"
               armature="0.01"/>
        <geom name="finger_l" type="box" size="{_v(FINGER_HALF)}" pos="0 {fy} {FINGER_CENTER_Z}"
              mass="0.05" rgba="{_v(FINGER_RGB)} 1" contype="0" conaffinity="{BOX_BIT | PRISM_BIT}"/>
      </body>
      <body name="finger_r" pos="0 0 0">
        <joint name="finger_r" type="slide" axis="0 1 0" range="0 {FINGER_TRAVEL}" damping="{finger_damping}"
               armature="0.01"/>
        <geom name="finger_r" type="box" size="{_v(FINGER_HALF)}" pos="0 {-fy} {FINGER_CENTER_Z}"
              mass="0.05" rgba="{_v(FINGER_RGB)} 1" contype="0" conaffinity="{BOX_BIT | PRISM_BIT}"/>
      </body>
    </body>
    {''.join(objects)}
  </worldbody>
  <equality>
    <weld name="ee_drive" body1="ee_target" body2="ee" solref="{weld_timeconst} 1"/>
  </equality>
  <actuator>
    <position name="finger_l" joint="finger_l" kp="{grip_kp}" ctrlrange="0 {FINGER_TRAVEL}"
              forcerange="-{grip_force} {grip_force}"/>
    <position name="finger_r" joint="finger_r" kp="{grip_kp}" ctrlrange="0 {FINGER_TRAVEL}"
              forcerange="-{grip_force} {grip_force}"/>
  </actuator>
</mujoco>
"""
