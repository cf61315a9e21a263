"""Tokenizers: the built-in byte tokenizer and the adapter for a local Hugging Face tokenizer directory
(built here offline with `tokenizers`)."""
import numpy as np
import pytest

from vlambpo_jax import loading
from vlambpo_jax.data import tokenizer as tok_lib


def test_byte_tokenizer_round_trip_and_padding():
    tok = tok_lib.load_tokenizer("byte")
    ids, mask = tok.encode_batch(["pick up the red cube", "go"], 16)
    assert ids.shape == (2, 16) and ids.dtype == np.int32 and mask.dtype == bool
    assert mask[1].sum() == 4 and ids[1, 0] == tok.bos_id and ids[1, 3] == tok.eos_id
    assert np.all(ids[~mask] == tok.pad_id)
    assert tok.decode(ids[1]) == "go"
    assert mask[0].all()  # cut to 16


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["pick", "up", "the", "red", "blue", "cube", "put", "in", "bowl"]
    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<bos>")
    path = tmp_path_factory.mktemp("hf_tok")
    fast.save_pretrained(str(path))
    return str(path), vocab


def test_hf_tokenizer_from_local_dir(hf_dir, tmp_path):
    path, vocab = hf_dir
    tok = tok_lib.load_tokenizer(path)
    assert tok.vocab_size == len(vocab)
    ids, mask = tok.encode_batch(["pick up the red cube", "put the zebra"], 8)
    np.testing.assert_array_equal(ids[0, :5], [vocab[w] for w in "pick up the red cube".split()])
    np.testing.assert_array_equal(mask.sum(1), [5, 3])
    assert ids[1, 2] == vocab["<unk>"] and np.all(ids[~mask] == vocab["<pad>"])
    assert tok.decode(ids[0][mask[0]]) == "pick up the red cube"
    # Round trip through checkpoint assets.
    tok_lib.save_tokenizer(tok, str(tmp_path / "assets"))
    again = tok_lib.load_tokenizer_from_assets(str(tmp_path / "assets"))
    np.testing.assert_array_equal(again.encode("put the blue cube in the bowl", 8)[0],
                                  tok.encode("put the blue cube in the bowl", 8)[0])
    with pytest.raises(FileNotFoundError, match="config.policy.tokenizer"):
        tok_lib.load_tokenizer(str(tmp_path / "missing"))


def test_word_tokenizer_for_tabletop_instructions(tmp_path):
    tok = loading.make_tokenizer("words:tabletop")
    ids, mask = tok.encode_batch(["Put the RED cube on the blue square!", "dance wildly"], 16)
    assert mask[0].sum() == 2 + 8 and tok.decode(ids[0]) == "put the red cube on the blue square"
    assert ids[1, 1] == tok.unk_id and ids[1, 2] == tok.unk_id
    assert ids[0, 3] != ids[0, 7]  # red vs blue: different ids
    tok_lib.save_tokenizer(tok, str(tmp_path))
    again = tok_lib.load_tokenizer_from_assets(str(tmp_path))
    np.testing.assert_array_equal(again.encode("stack the green cube", 8)[0], tok.encode("stack the green cube", 8)[0])
    again = tok_lib.tokenizer_from_assets(tok_lib.tokenizer_assets(tok), str(tmp_path / "x"))
    assert again.vocab == tok.vocab


def test_openpi_prompt_formats():
    """openpi's texts (models/tokenizer.py there): the instruction cleaned of '_' and newlines; 'pi0' ends
    it with a newline, 'pi05' adds the state's 256 bins of [-1, 1) (-1 below, 255 from 1 up)."""
    state = np.array([-1.01, -1.0, -0.99, 0.0, 0.999, 1.0, 7.0], np.float32)
    assert tok_lib.policy_prompt(" pick_up\nthe cube ", state, "plain") == " pick_up\nthe cube "
    assert tok_lib.policy_prompt(" pick_up\nthe cube ", None, "pi0") == "pick up the cube\n"
    assert (tok_lib.policy_prompt(" pick_up\nthe cube ", state, "pi05")
            == "Task: pick up the cube, State: -1 0 1 128 255 255 255;\nAction: ")
    with pytest.raises(ValueError, match="state"):
        tok_lib.policy_prompt("x", None, "pi05")


def test_sentencepiece_model_file(tmp_path):
    """A SentencePiece .model (how openpi ships PaliGemma's tokenizer): ids are the library's own with
    <bos> in front, as openpi's encode(text, add_bos=True); checkpoint assets restore it."""
    import io

    import sentencepiece

    corpus = ["pick up the red cube", "put the blue block in the bowl", "Task: lift it, State: 1 2 3;",
              "Action: move the cup to the left", "stack the green blocks"] * 20
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=40,
                                             pad_id=0, unk_id=1, bos_id=2, eos_id=3, model_type="unigram")
    path = tmp_path / "tokenizer.model"
    path.write_bytes(model.getvalue())
    reference = sentencepiece.SentencePieceProcessor(model_file=str(path))
    tok = tok_lib.load_tokenizer(str(path))
    assert tok.vocab_size == 40
    text = tok_lib.policy_prompt("pick up the red cube", np.array([0.1, -0.5]), "pi05")
    ids, mask = tok.encode(text, 64)
    expected = reference.encode(text, add_bos=True)
    assert expected[0] == 2 and 2 < len(expected) < 64
    np.testing.assert_array_equal(ids[mask], expected)
    assert not ids[~mask].any()
    tok_lib.save_tokenizer(tok, str(tmp_path / "assets"))
    again = tok_lib.load_tokenizer_from_assets(str(tmp_path / "assets"))
    np.testing.assert_array_equal(again.encode(text, 64)[0], ids)
    with pytest.raises(FileNotFoundError, match="SentencePiece"):
        tok_lib.load_tokenizer(str(tmp_path / "missing.model"))
