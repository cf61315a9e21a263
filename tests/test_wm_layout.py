"""Who sees whom in each world-model layout; RoPE ids; expert routing."""
import numpy as np
import pytest

from vlambpo_jax.models import sequence_layout as sl

L, V, N, A = 5, 4, 4, 3  # text, ViT tokens per view, latent tokens per view, action tokens


def seg_sees(layout, a, b):
    """Does any token of segment a see any token of segment b (and do all of them)?"""
    off = layout.offsets()
    m = layout.attention_mask()[slice(*off[a]), slice(*off[b])]
    return bool(m.any()), bool(m.all())


def layout(kind):
    return sl.dynamics_layout(kind, L, V, N, A)


def test_interleaved_visibility():
    lay = layout("interleaved")
    ctx = ["text", "head_vit", "head_vae", "wrist_vit", "wrist_vae", "action"]
    for c in ctx:  # the next head sees the whole context
        assert seg_sees(lay, "head_next", c) == (True, True)
    # its clean copies see only what the wrist may (else the action reaches the wrist through them)
    for copy in ("head_next_clean", "head_next_vit"):
        for c in ["text", "wrist_vit", "wrist_vae"]:
            assert seg_sees(lay, copy, c) == (True, True), (copy, c)
        for c in ["head_vit", "head_vae", "action"]:
            assert seg_sees(lay, copy, c) == (False, False), (copy, c)
    # the ViT copy of the next head sees its clean VAE copy (BAGEL order: noisy, clean VAE, ViT)
    assert seg_sees(lay, "head_next_vit", "head_next_clean") == (True, True)
    assert not seg_sees(lay, "head_next_clean", "head_next_vit")[0]
    # IVD: the wrist sees instruction, its own current view and the clean copies of the next head only.
    for c in ["text", "wrist_vit", "wrist_vae", "head_next_clean", "head_next_vit"]:
        assert seg_sees(lay, "wrist_next", c) == (True, True), c
    for c in ["head_vit", "head_vae", "action", "head_next"]:
        assert seg_sees(lay, "wrist_next", c) == (False, False), c
    # noisy copies are invisible to every later token, including their own clean twin
    for s in lay.segments:
        if s.name != "head_next":
            assert not seg_sees(lay, s.name, "head_next")[0], s.name
    # nothing in the context looks ahead
    for i, a in enumerate(ctx):
        for b in ctx[i + 1:]:
            assert not seg_sees(lay, a, b)[0], (a, b)


def test_independent_and_joint_visibility():
    ind, joint = layout("independent"), layout("joint")
    assert seg_sees(ind, "wrist_next", "head_next") == (False, False)
    assert seg_sees(ind, "head_next", "wrist_next") == (False, False)
    assert seg_sees(ind, "wrist_next", "action") == (True, True)
    assert seg_sees(ind, "wrist_next", "head_vae") == (True, True)
    assert seg_sees(joint, "wrist_next", "head_next") == (True, True)
    assert seg_sees(joint, "head_next", "wrist_next") == (True, True)
    assert [op for op, _ in joint.generation_plan()] == ["prefill", "generate"]
    assert [op for op, _ in layout("interleaved").generation_plan()] == [
        "prefill", "generate", "prefill", "generate"]
    assert [op for op, _ in ind.generation_plan()] == ["prefill", "generate", "generate"]


def test_inside_segments():
    lay = layout("interleaved")
    off, m = lay.offsets(), lay.attention_mask()
    t0, t1 = off["text"]
    assert np.array_equal(m[t0:t1, t0:t1], np.tril(np.ones((L, L), bool)))  # causal text
    a0, a1 = off["action"]
    assert np.array_equal(m[a0:a1, a0:a1], np.tril(np.ones((A, A), bool)))
    for name in ["head_vit", "head_vae", "head_next", "head_next_clean", "wrist_next"]:
        s0, s1 = off[name]
        assert m[s0:s1, s0:s1].all(), name  # bidirectional inside an image block


def test_ivd_wrist_sees_head_variant():
    """wrist_sees_head (not the paper's layout): the wrist and the copies also see the current head
    view, still never the action; the next head is unchanged."""
    lay = sl.dynamics_layout("interleaved", L, V, N, A, wrist_sees_head=True)
    for seg in ("wrist_next", "head_next_clean", "head_next_vit"):
        for c in ("text", "head_vit", "head_vae", "wrist_vit", "wrist_vae"):
            assert seg_sees(lay, seg, c) == (True, True), (seg, c)
        assert seg_sees(lay, seg, "action") == (False, False), seg
    a, b = lay.offsets()["head_next"]
    np.testing.assert_array_equal(lay.attention_mask()[a:b, :b],
                                  layout("interleaved").attention_mask()[a:b, :b])


def test_ivd_without_vit_copy():
    """vit_copy=False: the older layout (VAE-only copy), kept for checkpoints trained with it."""
    lay = sl.dynamics_layout("interleaved", L, V, N, A, vit_copy=False)
    assert [s.name for s in lay.segments][-3:] == ["head_next", "head_next_clean", "wrist_next"]
    assert lay.segment("wrist_next").sees == ("text", "wrist_vit", "wrist_vae", "head_next_clean")
    pos, off = lay.rope_ids(), lay.offsets()
    assert set(pos[slice(*off["wrist_next"])]) == {pos[off["head_next"][0]] + 1}
    assert lay.length == layout("interleaved").length - V


def test_rope_ids_and_experts():
    lay = layout("interleaved")
    off, pos, ex = lay.offsets(), lay.rope_ids(), lay.expert_ids()
    assert list(pos[slice(*off["text"])]) == list(range(L))
    blocks = ["head_vit", "head_vae", "wrist_vit", "wrist_vae"]
    for i, b in enumerate(blocks):  # one id per image block, consecutive after the text
        assert set(pos[slice(*off[b])]) == {L + i}
    assert list(pos[slice(*off["action"])]) == list(range(L + 4, L + 4 + A))
    head_id = pos[off["head_next"][0]]
    assert set(pos[slice(*off["head_next"])]) == {head_id} == {L + 4 + A}
    assert set(pos[slice(*off["head_next_clean"])]) == {head_id}  # clean copy shares its twin's id
    assert set(pos[slice(*off["head_next_vit"])]) == {head_id + 1}  # the ViT copy takes the next id
    assert set(pos[slice(*off["wrist_next"])]) == {head_id + 2}
    for name, e in [("text", 0), ("head_vit", 0), ("action", 0), ("head_vae", 1), ("head_next", 1),
                    ("head_next_clean", 1), ("head_next_vit", 0), ("wrist_next", 1)]:
        assert set(ex[slice(*off[name])]) == {e}, name
    drops = lay.drop_categories()
    assert drops["text"][slice(*off["action"])].all() and not drops["text"][slice(*off["head_vit"])].any()
    assert drops["vae"][slice(*off["head_next_clean"])].all() and not drops["vae"][slice(*off["head_next"])].any()
    assert drops["vit"][slice(*off["head_next_vit"])].all()
    assert [op for op, names in lay.generation_plan()][2:] == ["prefill", "generate"]
    assert lay.generation_plan()[2][1] == ("head_next_clean", "head_next_vit")


def test_reward_layout_and_errors():
    r = sl.reward_layout(V, 3, L, 2)
    assert r.attention_mask()[-1].all()  # the answer token sees the image and the whole question
    assert set(r.expert_ids()) == {0}
    both = sl.reward_layout(V, 3, L, 2, views=(0, 1))               # the question about both views
    assert [sg.source for sg in both.segments[:2]] == [("vit", 0), ("vit", 1)]
    assert both.attention_mask()[-1].all() and both.length == r.length + V
    rope = both.rope_ids()
    assert len(set(rope[:V])) == 1 and len(set(rope[V:2 * V])) == 1 and rope[0] != rope[V]
    with pytest.raises(ValueError, match="view_decoding"):
        layout("bogus")
    with pytest.raises(ValueError, match="not an earlier segment"):
        sl.Layout((sl.Segment("a", "full", 1, 0, sees=("b",)), sl.Segment("b", "full", 1, 0)))
