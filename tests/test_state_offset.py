"""tools/state_offset: the shift it applies to a truth policy's positions, and its refusals."""
import numpy as np
import pytest

from vlambpo_jax.tools import state_offset


def test_offset_moves_both_positions_by_the_distance_and_nothing_else():
    rng = np.random.default_rng(0)
    state = rng.uniform(-0.3, 0.3, (64, 11)).astype(np.float32)
    state[:, 9:11] = state[:, 7:9]     # pick: the goal is the object
    moved = np.asarray(state_offset.offset_positions(state, 0.015))
    np.testing.assert_array_equal(moved[:, :7], state[:, :7])
    for cols in (slice(7, 9), slice(9, 11)):
        np.testing.assert_allclose(np.linalg.norm(moved[:, cols] - state[:, cols], axis=1), 0.015, rtol=1e-3)
    np.testing.assert_allclose(moved[:, 9:11], moved[:, 7:9], atol=1e-7)   # one misplaced detection
    # the direction depends only on the true object xy: the same positions, the same shift
    other = state.copy()
    other[:, :7] = rng.uniform(-1, 1, (64, 7))
    np.testing.assert_allclose(np.asarray(state_offset.offset_positions(other, 0.015))[:, 7:], moved[:, 7:],
                               atol=1e-7)
    angles = np.arctan2(*(moved[:, 7:9] - state[:, 7:9]).T[::-1])
    assert np.ptp(angles) > 3.0        # spread over directions, not one fixed bias
    np.testing.assert_array_equal(np.asarray(state_offset.offset_positions(state, 0.0)), state)


def test_true_percept_takes_positions_and_tool_from_the_state_and_keeps_the_rest():
    rng = np.random.default_rng(1)
    predicted = rng.normal(size=(4, 13)).astype(np.float32)
    state = rng.uniform(-0.3, 0.3, (4, 11)).astype(np.float32)
    out = np.asarray(state_offset.true_percept(predicted, state))
    np.testing.assert_allclose(out[:, 0:4], 10.0 * state[:, 7:11], rtol=1e-6)   # decimetres
    np.testing.assert_allclose(out[:, 10:13], 10.0 * state[:, 0:3], rtol=1e-6)
    np.testing.assert_array_equal(out[:, 4:10], predicted[:, 4:10])
    short = np.asarray(state_offset.true_percept(predicted[:, :4], state))   # a 4-dim perceived state
    np.testing.assert_allclose(short, 10.0 * state[:, 7:11], rtol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--config=configs/tabletop.py:smoke"], "needs a policy that reads the true positions"),
    (["--config=configs/tabletop.py:smoke", "--config.env.privileged_state=True"], "sft"),
    (["--config=configs/tabletop.py:smoke,truth", "--offsets_cm=1,x"], "--offsets_cm: numbers in cm"),
    (["--config=configs/tabletop.py:smoke,truth"], "sft"),
])
def test_refusals_are_one_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        state_offset.main(args + [f"--workdir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
