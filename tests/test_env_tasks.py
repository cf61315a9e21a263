"""Tasks without physics: instruction wording (shape nouns, tokenizer coverage and length) and the success
predicates with per-object heights (a cylinder on a block is not a cube on a cube)."""
import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from configs import tabletop as tabletop_config
from vlambpo_jax import loading
from vlambpo_jax.envs import scene as S
from vlambpo_jax.envs import tasks


@pytest.fixture(scope="module")
def table():
    return tasks.build_instructions(tasks.get_tasks(sorted(tasks.REGISTRY)))


def test_objects_differ_in_colour_and_shape():
    assert len({o.colour for o in S.OBJECTS}) == S.NUM_OBJECTS
    assert len({o.noun for o in S.OBJECTS}) == S.NUM_OBJECTS
    assert {o.shape for o in S.OBJECTS} == {"box", "cylinder"}
    sizes = {tuple(o.size) for o in S.OBJECTS if o.shape == "box"}
    assert len(sizes) == len([o for o in S.OBJECTS if o.shape == "box"])
    assert len(set(S.OBJECT_HALF_HEIGHT.tolist())) == S.NUM_OBJECTS   # the stack heights differ


def test_every_instruction_names_the_objects_by_colour_and_shape(table):
    names = [o.name for o in S.OBJECTS]
    for ti, task in enumerate(tasks.get_tasks(sorted(tasks.REGISTRY))):
        for ci, gi, pi in itertools.product(*(range(n) for n in table.ids.shape[1:])):
            i = table.ids[ti, ci, gi, pi]
            if i < 0:
                continue
            text = table.strings[i]
            assert f"the {names[ci]}" in text, text
            if task.goal_kind == "object":
                assert f"the {names[gi % len(names)]}" in text, text
                assert gi % len(names) != ci
            # no other object is mentioned
            others = [n for k, n in enumerate(names) if k != ci and not (task.goal_kind == "object"
                                                                           and k == gi % len(names))]
            assert not any(n in text for n in others), text
            # no shape noun of another object stands next to this object's colour ("red cylinder")
            for o in S.OBJECTS:
                for noun in {p.noun for p in S.OBJECTS} - {o.noun}:
                    assert f"{o.colour} {noun}" not in text, text


def test_word_tokenizer_covers_every_instruction_within_max_text_len(table):
    tok = loading.make_tokenizer("words:tabletop")
    max_len = tabletop_config.get_config("").data.max_text_len
    for text in table.strings:
        ids, mask = tok.encode(text, max_len)
        words = tok.words(text)
        assert len(words) + 2 <= max_len, (text, len(words))
        assert tok.unk_id not in ids[mask], text
        assert tok.decode(ids[mask]) == " ".join(words)
    for o in S.OBJECTS:
        assert o.noun in tok.vocab and o.colour in tok.vocab


def _scene(obj_pos, obj=0, goal=1, gap=0.09):
    return tasks.Scene(obj_pos=jnp.asarray(obj_pos, jnp.float32), obj_yaw=jnp.zeros(3),
                       zone_pos=jnp.array([[0.1, -0.1, 0.0], [-0.1, -0.1, 0.0]]),
                       ee_pos=jnp.zeros(3), tcp_pos=jnp.zeros(3), ee_rpy=jnp.zeros(3),
                       gap=jnp.asarray(gap, jnp.float32), obj=jnp.asarray(obj), goal=jnp.asarray(goal))


def _resting(xy):
    return np.c_[np.asarray(xy, np.float32), S.OBJECT_HALF_HEIGHT]


def test_stack_uses_each_objects_height():
    h = S.OBJECT_HALF_HEIGHT
    for obj, base in itertools.permutations(range(S.NUM_OBJECTS), 2):
        pos = _resting([[0.1, 0.1], [0.0, 0.1], [-0.1, 0.1]])
        pos[obj] = pos[base] + [0.004, -0.003, h[obj] + h[base]]
        assert bool(tasks.success_stack(_scene(pos, obj, base))), (obj, base)
        # Resting at the height a stack of two cubes would have: not on top unless the heights add up.
        pos[obj, 2] = pos[base, 2] + 2 * S.OBJECTS[0].half_height
        off = abs(h[obj] + h[base] - 2 * S.OBJECTS[0].half_height)
        if off > 1.5 * tasks.STACK_HEIGHT_TOL or off < 0.5 * tasks.STACK_HEIGHT_TOL:   # clear cases
            expected = off < tasks.STACK_HEIGHT_TOL
            assert bool(tasks.success_stack(_scene(pos, obj, base))) == expected, (obj, base)
        # Still held (fingers closed to the object's width): not a success.
        pos[obj, 2] = pos[base, 2] + h[obj] + h[base]
        held = S.OBJECT_GRASP_WIDTH[obj] + 0.001
        assert not bool(tasks.success_stack(_scene(pos, obj, base, gap=held)))
        # Beside the base: not stacked.
        pos[obj, :2] = pos[base, :2] + [0.03, 0.0]
        assert not bool(tasks.success_stack(_scene(pos, obj, base)))
    # The check above can tell: some pair's stack height is off a two-cube stack by more than the
    # tolerance (the cube on the 7 cm cylinder: 1 cm higher), so a predicate with the cube's height fails.
    pairs = itertools.permutations(range(S.NUM_OBJECTS), 2)
    assert max(abs(h[a] + h[b] - 2 * S.OBJECTS[0].half_height) for a, b in pairs) > 1.5 * tasks.STACK_HEIGHT_TOL


def test_pick_place_and_push_use_each_objects_height():
    for obj in range(S.NUM_OBJECTS):
        pos = _resting([[0.1, 0.1], [0.0, 0.1], [-0.1, 0.1]])
        h = S.OBJECT_HALF_HEIGHT[obj]
        assert not bool(tasks.success_pick(_scene(pos, obj, 0)))
        pos[obj, 2] = h + 0.061
        assert bool(tasks.success_pick(_scene(pos, obj, 0)))
        pos[obj, 2] = h + 0.059
        assert not bool(tasks.success_pick(_scene(pos, obj, 0)))
        pos[obj] = [0.1, -0.1, h]          # resting on zone 0
        assert bool(tasks.success_push(_scene(pos, obj, 0)))
        assert bool(tasks.success_place(_scene(pos, obj, 0)))
        held = S.OBJECT_GRASP_WIDTH[obj] + 0.001
        assert not bool(tasks.success_place(_scene(pos, obj, 0, gap=held)))
        pos[obj, 2] = h + 0.02             # above the square, not on it
        assert not bool(tasks.success_push(_scene(pos, obj, 0)))
