"""The world model's own tokenizer (config.wm.tokenizer): with a Hugging Face tokenizer directory (as
BAGEL's Qwen2 one), the reward question, its Yes / No answers and every instruction the stages hand the
world model are that tokenizer's ids; the byte vocabulary stays the default."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tabletop
from tests.helpers.word_tokenizer import QUESTION_WORDS, save_word_tokenizer
from vlambpo_jax.config_checks import ConfigError, validate
from vlambpo_jax.data.tokenizer import ByteTokenizer, HFTokenizer, load_wm_tokenizer
from vlambpo_jax.models import action_tokens as at
from vlambpo_jax.models.world_model import WorldModel
from vlambpo_jax.rl import offline
from vlambpo_jax.stages import wm_common

WORDS = [*QUESTION_WORDS, "pick", "up", "red", "cube"]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return save_word_tokenizer(WORDS, tmp_path_factory.mktemp("wm_tok"))


def _config(path, **wm):
    c = tabletop.get_config("smoke")
    c.wm.update(dict(dict(tokenizer=path, num_sample_steps=2), **wm))
    c.wm.umm.vocab_size = len(WORDS) + 2
    return c


def test_vocabulary_is_the_tokenizers(hf, tmp_path):
    path, vocab = hf
    v = at.vocabulary(HFTokenizer(path))
    assert v.prefix_ids.tolist() == [vocab[w] for w in ("Is", "the", "task", "'")]
    assert v.suffix_ids.tolist() == [vocab[w] for w in ("'", "completed", "?", "Answer", ":")]
    assert (v.yes_id, v.no_id, v.size, v.action_bins) == (vocab["Yes"], vocab["No"], len(vocab), False)
    byte = at.vocabulary(load_wm_tokenizer(tabletop.get_config("smoke").wm))     # the default
    assert (byte.yes_id, byte.no_id, byte.size, byte.action_bins) == (516, 517, 518, True)
    assert byte.prefix_ids.tolist() == [3 + b for b in b"Is the task '"]
    no_yes, _ = save_word_tokenizer([w for w in WORDS if w != "Yes"], tmp_path / "no_yes")     # " Yes" is <unk>
    with pytest.raises(ValueError, match="' Yes' must be one token of its own"):
        at.vocabulary(HFTokenizer(no_yes))


def test_world_model_reads_and_answers_in_its_tokenizers_ids(hf):
    path, vocab = hf
    wm = WorldModel(_config(path))
    params = wm.init(jax.random.PRNGKey(0))
    assert params["net"]["params"]["backbone"]["embedder"]["embedding"].shape[0] == len(vocab)
    tokens, mask = HFTokenizer(path).encode_batch(["pick up the red cube", "pick up the cube"], 8)
    images = np.random.default_rng(0).integers(0, 256, (2, 2, 32, 32, 3), dtype=np.uint8)
    logits = wm.reward_logits(params, images, jnp.asarray(tokens), jnp.asarray(mask))
    p = wm.reward(params, images, jnp.asarray(tokens), jnp.asarray(mask))
    np.testing.assert_allclose(p, jax.nn.sigmoid(logits[:, vocab["Yes"]] - logits[:, vocab["No"]]), rtol=1e-6)
    # the question around the instruction is part of what the reward reads
    moved = WorldModel(_config(path))
    moved.prefix_ids = moved.prefix_ids[::-1].copy()
    assert np.abs(np.asarray(moved.reward(params, images, jnp.asarray(tokens), jnp.asarray(mask)) - p)).max() > 1e-6
    small = _config(path)
    small.wm.umm.vocab_size = 5
    with pytest.raises(ValueError, match="vocab_size=5 is smaller than the world model's vocabulary"):
        WorldModel(small)


def test_stages_hand_the_world_model_its_tokenizers_ids(hf):
    path, _ = hf
    tok = HFTokenizer(path)
    text = "pick up the red cube"
    want = tok.encode(text, 8)
    rng = np.random.default_rng(0)
    episode = dict(length=6, images=rng.integers(0, 256, (6, 2, 32, 32, 3), dtype=np.uint8),
                   image_mask=np.ones(2, bool), state=np.zeros((6, 7), np.float32),
                   action=np.zeros((6, 7), np.float32), instruction=np.array([text] * 6), success=True, index=0,
                   state_norm=np.zeros((6, 7), np.float32), action_norm=np.zeros((6, 7), np.float32))
    roots = offline.logged_roots([episode], 2, ByteTokenizer(), 32, tok, 8)     # the real-robot roots
    np.testing.assert_array_equal(roots["wm_tokens"], np.broadcast_to(want[0], (3, 8)))
    np.testing.assert_array_equal(roots["wm_token_mask"], np.broadcast_to(want[1], (3, 8)))
    assert roots["tokens"][0, 0] == ByteTokenizer.bos_id                          # the policy keeps its own
    examples = wm_common.RewardExamples([episode], 4, 0, 8, tokenizer=tok)(0)   # world-model training
    np.testing.assert_array_equal(examples["reward_tokens"], np.broadcast_to(want[0], (4, 8)))


def test_config_refuses_what_the_tokenizer_cannot_carry(hf):
    path, _ = hf
    validate(_config(path))
    with pytest.raises(ConfigError, match="wm.action_encoding.*needs the byte vocabulary"):
        validate(_config(path, action_encoding="bins"))
    config = _config(path)
    config.wm.umm.vocab_size = 0
    with pytest.raises(ConfigError, match="wm.umm.vocab_size.*must be set with config.wm.tokenizer"):
        validate(config)
