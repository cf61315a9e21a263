"""Packed-sequence layouts of the world model -> attention mask, RoPE ids, expert routing.

A layout is an ordered list of segments (text, ViT tokens of a view, clean VAE latents of a view, action
tokens, the noisy latents of a view being generated, the clean copy of a generated view). Everything
the backbone needs is derived from it with numpy at trace time, so masks are static constants under jit
and interleaved / independent / joint view decoding are just different layouts:

- `causal` segments (text, actions): causal inside, see every visible earlier segment.
- `full` segments (ViT tokens, clean VAE latents): bidirectional inside, see every visible earlier one.
- `noise` segments (an image being generated): bidirectional inside, see every visible earlier segment,
  and no other segment ever attends to them (except noise segments of the same `group`, which are
  generated jointly). A generated image that later segments need is followed by a clean `full` copy
  (`rope_twin` = the noisy segment) that later segments see instead.
- `sees`: an explicit tuple of earlier segment names a segment (and everything it is made of) may
  attend to; None = all earlier non-noise segments. IVD uses it to hide the action and the current head
  view from the wrist-view generation.
- RoPE ids: consecutive inside a causal segment; a whole image block shares one id; a clean copy shares
  its noisy twin's id and does not advance the counter.
- Expert routing: text and ViT tokens -> understanding expert (0); every VAE latent, noisy or clean ->
  generation expert (1).
- `drop`: the conditioning-dropout / CFG category of a segment's keys ('text', 'vit', 'vae' or None).
  Dropping a category hides those keys from every *other* segment (a segment always sees itself).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

UND, GEN = 0, 1
DROP_CATEGORIES = ("text", "vit", "vae")


@dataclasses.dataclass(frozen=True)
class Segment:
    """One contiguous block of the packed sequence.

    name: unique name within the layout.
    kind: 'causal' | 'full' | 'noise'.
    length: number of tokens.
    expert: UND (0) or GEN (1).
    source: what fills it, interpreted by the world model: ('text',), ('action',), ('vit', view),
      ('vae', view) (clean current latent), ('noisy', view) (x_t of the next view),
      ('clean_next', view) (clean next latent), ('vit_next', view) (ViT tokens of the next view's
      image), ('question_prefix',), ('question_suffix',).
    drop: dropout / CFG category of its keys ('text' | 'vit' | 'vae' | None).
    sees: names of the earlier segments it may attend to; None = all earlier non-noise segments.
    group: noise segments with the same group see each other (joint generation).
    rope_twin: name of the noise segment whose RoPE id this clean copy shares.
    """
    name: str
    kind: str
    length: int
    expert: int
    source: tuple = ()
    drop: str | None = None
    sees: tuple[str, ...] | None = None
    group: str | None = None
    rope_twin: str | None = None


@dataclasses.dataclass(frozen=True)
class Layout:
    segments: tuple[Segment, ...]

    def __post_init__(self):
        names = [s.name for s in self.segments]
        if len(set(names)) != len(names):
            raise ValueError(f"layout has duplicate segment names: {names}")
        for i, s in enumerate(self.segments):
            if s.kind not in ("causal", "full", "noise"):
                raise ValueError(f"segment {s.name!r}: kind {s.kind!r} is not causal|full|noise")
            if s.drop not in (None,) + DROP_CATEGORIES:
                raise ValueError(f"segment {s.name!r}: drop {s.drop!r} not in {DROP_CATEGORIES}")
            earlier = names[:i]
            for n in (s.sees or ()):
                if n not in earlier:
                    raise ValueError(f"segment {s.name!r} sees {n!r}, which is not an earlier segment")
            if s.rope_twin is not None:
                if s.rope_twin not in earlier or self.segment(s.rope_twin).kind != "noise":
                    raise ValueError(f"segment {s.name!r}: rope_twin {s.rope_twin!r} must be an earlier "
                                     "noise segment")

    # ---- lookup ----
    def segment(self, name: str) -> Segment:
        for s in self.segments:
            if s.name == name:
                return s
        raise KeyError(f"no segment {name!r} in layout ({[s.name for s in self.segments]})")

    @property
    def length(self) -> int:
        return sum(s.length for s in self.segments)

    def offsets(self) -> dict[str, tuple[int, int]]:
        """name -> (start, stop) token indices."""
        out, p = {}, 0
        for s in self.segments:
            out[s.name] = (p, p + s.length)
            p += s.length
        return out

    def indices(self, names: Sequence[str]) -> np.ndarray:
        """Token indices int[N] of the named segments, in the given order."""
        off = self.offsets()
        return np.concatenate([np.arange(*off[n]) for n in names]).astype(np.int32)

    # ---- derived arrays (numpy, static under jit) ----
    def segment_ids(self) -> np.ndarray:
        """int32[T]: index of each token's segment."""
        return np.concatenate([np.full(s.length, i, np.int32) for i, s in enumerate(self.segments)])

    def expert_ids(self) -> np.ndarray:
        """int32[T]: 0 = understanding expert, 1 = generation expert."""
        return np.concatenate([np.full(s.length, s.expert, np.int32) for s in self.segments])

    def drop_categories(self) -> dict[str, np.ndarray]:
        """category -> bool[T], the tokens whose keys that category's dropout hides."""
        return {c: np.concatenate([np.full(s.length, s.drop == c) for s in self.segments])
                for c in DROP_CATEGORIES}

    def segment_visibility(self) -> np.ndarray:
        """bool[S, S]: may segment a attend to (some of) segment b."""
        segs = self.segments
        n = len(segs)
        vis = np.zeros((n, n), bool)
        for a, sa in enumerate(segs):
            for b, sb in enumerate(segs):
                if a == b:
                    vis[a, b] = True
                elif sa.kind == "noise" and sb.kind == "noise" and sa.group is not None \
                        and sa.group == sb.group:
                    vis[a, b] = True
                elif sb.kind == "noise" or b > a:
                    vis[a, b] = False
                elif sa.sees is not None:
                    vis[a, b] = sb.name in sa.sees
                else:
                    vis[a, b] = True
        return vis

    def attention_mask(self) -> np.ndarray:
        """bool[T, T]: True where query token i may attend to key token j."""
        seg = self.segment_ids()
        mask = self.segment_visibility()[seg[:, None], seg[None, :]]
        same = seg[:, None] == seg[None, :]
        causal = np.array([self.segments[s].kind == "causal" for s in seg])
        idx = np.arange(len(seg))
        inside_causal = same & causal[:, None]
        mask &= ~inside_causal | (idx[None, :] <= idx[:, None])
        return mask

    def rope_ids(self) -> np.ndarray:
        """int32[T]: RoPE position of each token."""
        ids, seg_pos, p = [], {}, 0
        for s in self.segments:
            if s.rope_twin is not None:
                pos = np.full(s.length, seg_pos[s.rope_twin], np.int32)
            elif s.kind == "causal":
                pos = np.arange(p, p + s.length, dtype=np.int32)
                p += s.length
            else:
                pos = np.full(s.length, p, np.int32)
                seg_pos[s.name] = p
                p += 1
            ids.append(pos)
        return np.concatenate(ids) if ids else np.zeros((0,), np.int32)

    def generation_plan(self) -> list[tuple[str, tuple[str, ...]]]:
        """Splits the layout into sampler steps: ('prefill', names) runs of known segments and
        ('generate', names) runs of noise segments of one group (or a single noise segment)."""
        plan: list[tuple[str, list[str]]] = []
        for s in self.segments:
            op = "generate" if s.kind == "noise" else "prefill"
            if plan and plan[-1][0] == op and (
                    op == "prefill" or (s.group is not None and
                                        self.segment(plan[-1][1][-1]).group == s.group)):
                plan[-1][1].append(s.name)
            else:
                plan.append((op, [s.name]))
        return [(op, tuple(names)) for op, names in plan]


def text_layout(length: int, expert: int = UND) -> Layout:
    """A plain causal text sequence (language-model parity, captions)."""
    return Layout((Segment("text", "causal", length, expert, ("text",), "text"),))


def dynamics_layout(view_decoding: str, text_len: int, vit_tokens: int, latent_tokens: int,
                    action_tokens: int, vit_copy: bool = True, wrist_sees_head: bool = False) -> Layout:
    """The world-model transition sequence for one chunk (views 0 = head, 1 = wrist).

    Context: instruction, head (ViT + clean VAE), wrist (ViT + clean VAE), action tokens. Then:
      interleaved: head_next (noise) -> head_next clean VAE copy -> (vit_copy) head_next ViT copy ->
        wrist_next (noise), the wrist seeing only the instruction, the current wrist view and the
        clean copies of the next head (not the action, not the current head view), as IVD prescribes;
        the copies see no more than that either (the paper samples the wrist in a second call).
        The copies are what BAGEL puts after a generated image that later tokens condition on: clean
        VAE tokens (sharing the noisy twin's RoPE id, then advancing it) and ViT tokens (the next id).
        In training they are the real next head (teacher forcing); at inference the predicted latent
        and the ViT tokens of its decoded image. vit_copy=False is the older VAE-only layout (kept for
        checkpoints trained with it). wrist_sees_head (not the paper's) also shows the wrist and the
        copies the current head view, still not the action: the motion is then the difference of
        two views from one camera instead of a gripper pose read across cameras;
      independent: head_next and wrist_next (noise), each from the whole context, invisible to each other;
      joint: head_next and wrist_next generated together (one noise group).
    """
    ctx = [
        Segment("text", "causal", text_len, UND, ("text",), "text"),
        Segment("head_vit", "full", vit_tokens, UND, ("vit", 0), "vit"),
        Segment("head_vae", "full", latent_tokens, GEN, ("vae", 0), "vae"),
        Segment("wrist_vit", "full", vit_tokens, UND, ("vit", 1), "vit"),
        Segment("wrist_vae", "full", latent_tokens, GEN, ("vae", 1), "vae"),
        Segment("action", "causal", action_tokens, UND, ("action",), "text"),
    ]
    if view_decoding == "interleaved":
        # The copies, like the wrist, see only what the paper's second generation call holds: in a
        # deeper backbone their hidden states would otherwise carry the action to the wrist.
        second_call = ("text",) + (("head_vit", "head_vae") if wrist_sees_head else ()) + (
            "wrist_vit", "wrist_vae")
        copies = [Segment("head_next_clean", "full", latent_tokens, GEN, ("clean_next", 0), "vae",
                          sees=second_call, rope_twin="head_next")]
        if vit_copy:
            copies.append(Segment("head_next_vit", "full", vit_tokens, UND, ("vit_next", 0), "vit",
                                  sees=second_call + ("head_next_clean",)))
        gen = [Segment("head_next", "noise", latent_tokens, GEN, ("noisy", 0))] + copies + [
            Segment("wrist_next", "noise", latent_tokens, GEN, ("noisy", 1),
                    sees=second_call + tuple(c.name for c in copies)),
        ]
    elif view_decoding == "independent":
        gen = [Segment("head_next", "noise", latent_tokens, GEN, ("noisy", 0)),
               Segment("wrist_next", "noise", latent_tokens, GEN, ("noisy", 1))]
    elif view_decoding == "joint":
        gen = [Segment("head_next", "noise", latent_tokens, GEN, ("noisy", 0), group="next"),
               Segment("wrist_next", "noise", latent_tokens, GEN, ("noisy", 1), group="next")]
    else:
        raise ValueError(f"config.wm.view_decoding={view_decoding!r}; expected interleaved | "
                         "independent | joint")
    return Layout(tuple(ctx + gen))


def reward_layout(vit_tokens: int, prefix_len: int, text_len: int, suffix_len: int,
                  views: Sequence[int] = (0,)) -> Layout:
    """The Yes/No question about the images of `views` (the paper: the head view only): ViT tokens
    of each (one image block each), then causal text "Is the task '" + instruction + "' completed?";
    the answer is read at the last token."""
    return Layout(tuple(
        Segment(f"image_vit_{v}", "full", vit_tokens, UND, ("vit", v), "vit") for v in views) + (
        Segment("question_prefix", "causal", prefix_len, UND, ("question_prefix",)),
        Segment("text", "causal", text_len, UND, ("text",), "text"),
        Segment("question_suffix", "causal", suffix_len, UND, ("question_suffix",)),
    ))
