"""Per-robot observation mapping of the policy server (no model, no network)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vlambpo_jax.data import normalization
from vlambpo_jax.data.tokenizer import ByteTokenizer
from vlambpo_jax.serve import robot as robot_lib
from vlambpo_jax.serve.robot import ObservationMapper, RequestError, load_robot_config


def _mapper(robot, **kw):
    return ObservationMapper(robot, image_size=32, max_text_len=16, tokenizer=ByteTokenizer(), **kw)


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_nested_keys_and_chw_images_aloha_layout():
    head, wrist = _img(32, 32, 1), _img(32, 32, 2)
    obs = {"images": {"cam_high": head.transpose(2, 0, 1), "cam_left_wrist": wrist.transpose(2, 0, 1)},
           "state": np.zeros(14), "prompt": "fold the towel"}
    out, seed = _mapper(load_robot_config("aloha", 2))(obs)
    np.testing.assert_array_equal(out["images"], np.stack([head, wrist]))
    assert out["image_mask"].tolist() == [True, True] and seed is None and "state" not in out
    ids, mask = ByteTokenizer().encode("fold the towel", 16)
    np.testing.assert_array_equal(out["tokens"], ids)
    np.testing.assert_array_equal(out["token_mask"], mask)


def test_resize_matches_openpi_client_image_tools():
    image_tools = pytest.importorskip("openpi_client.image_tools")
    img = _img(48, 64)
    out, _ = _mapper(load_robot_config("libero", 2))(
        {"observation/image": img, "observation/wrist_image": img, "prompt": "x"})
    np.testing.assert_array_equal(out["images"][0], image_tools.resize_with_pad(img, 32, 32))
    strict = robot_lib.RobotConfig(resize_images=False)
    with pytest.raises(RequestError, match="48x64; this policy takes 32x32"):
        _mapper(strict)({"observation/image": img, "observation/wrist_image": img, "prompt": "x"})


def test_missing_camera_default_prompt_and_seed():
    robot = robot_lib.RobotConfig(name="one-cam", image_keys=("cam", ""), default_prompt="stack the blocks")
    out, seed = _mapper(robot)({"cam": _img(32, 32), "seed": np.int64(12)})
    assert out["image_mask"].tolist() == [True, False] and not out["images"][1].any() and seed == 12
    np.testing.assert_array_equal(out["tokens"], ByteTokenizer().encode("stack the blocks", 16)[0])
    for bad in (2 ** 31, -1, 1.5, True, "3"):
        with pytest.raises(RequestError, match="'seed' must be an int"):
            _mapper(robot)({"cam": _img(32, 32), "seed": bad})


def test_state_is_concatenated_and_normalized_with_checkpoint_stats():
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=7).astype(np.float32), rng.uniform(1, 2, 7).astype(np.float32)
    stats = normalization.ArrayStats(mean=mean, std=std, q01=mean - 2 * std, q99=mean + 2 * std, min=mean - 3,
                                     max=mean + 3, mask=np.array([True] * 6 + [False]))
    norm = lambda s: normalization.normalize(s, stats, "zscore")  # noqa: E731
    mapper = _mapper(load_robot_config("droid", 2), use_state=True, state_dim=7, state_norm=norm)
    joints, grip = rng.normal(size=6), np.array([0.7])
    obs = {"observation/exterior_image_1_left": _img(32, 32), "observation/wrist_image_left": _img(32, 32),
           "observation/joint_position": joints, "observation/gripper_position": grip, "prompt": "open"}
    out, _ = mapper(obs)
    want = np.concatenate([(joints - mean[:6]) / std[:6], grip]).astype(np.float32)
    np.testing.assert_allclose(out["state"], want, rtol=1e-6)
    assert out["state"].dtype == np.float32
    with pytest.raises(RequestError, match="has 6 values; the policy takes 7"):
        mapper({**obs, "observation/gripper_position": np.zeros(0)})
    with pytest.raises(RequestError, match="non-finite"):
        mapper({**obs, "observation/joint_position": np.full(6, np.nan)})
    with pytest.raises(RequestError, match="missing 'observation/joint_position'"):
        mapper({k: v for k, v in obs.items() if k != "observation/joint_position"})
    with pytest.raises(RequestError, match="1-D numeric"):
        mapper({**obs, "observation/joint_position": np.zeros((2, 3))})


def test_robot_config_files_and_errors(tmp_path):
    path = tmp_path / "arm.json"
    path.write_text(json.dumps({"base": "droid", "default_prompt": "wipe", "image_keys": ["front", "hand"]}))
    robot = load_robot_config(str(path), 2)
    assert robot.image_keys == ("front", "hand") and robot.default_prompt == "wipe"
    assert robot.state_keys == robot_lib.PRESETS["droid"].state_keys and robot.name == "arm.json"

    path.write_text(json.dumps({"image_key": ["a", "b"]}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['image_key'\]"):
        load_robot_config(str(path), 2)
    path.write_text(json.dumps({"image_keys": ["a"]}))
    with pytest.raises(ValueError, match="image_keys needs 2 strings"):
        load_robot_config(str(path), 2)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_robot_config(str(path), 2)
    with pytest.raises(ValueError, match="neither a preset"):
        load_robot_config("no-such-robot", 2)


def test_openpi_client_is_installed():
    """The serving tests (tests/test_serve.py) run the real robot-side client; without it they skip, and
    this test says how to install it (it pins numpy<2, yet works on numpy 2: install without its pins)."""
    try:
        import openpi_client.websocket_client_policy  # noqa: F401
    except ImportError:
        pytest.fail("openpi-client is not installed, so tests/test_serve.py was skipped; install it with "
                    "`pip install --no-deps openpi-client==0.1.2` (README: Serving a policy to a robot)")
