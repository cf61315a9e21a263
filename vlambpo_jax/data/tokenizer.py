"""Text tokenizers: a built-in byte-level tokenizer and an adapter for local Hugging Face tokenizers,
and the text the policy reads (`policy_prompt`).

Both map a string to fixed-length int32 ids plus a bool validity mask, so batches have static shapes.
"""
from __future__ import annotations

import base64
import json
import os
import re
import tempfile

import numpy as np
import sentencepiece

PROMPT_FORMATS = ("plain", "pi0", "pi05")
STATE_BINS = 256


def policy_prompt(instruction: str, state=None, prompt_format: str = "plain") -> str:
    """The text the policy's tokenizer encodes (config.policy.prompt_format).

    'plain': the instruction. 'pi0': openpi's prompt without the state, the cleaned instruction and a
    newline (pi0, and pi0.5 checkpoints trained with discrete_state_input=False such as openpi's
    pi05_libero; openpi tokenizes the newline separately, here it is part of the text). 'pi05': openpi's
    pi0.5 prompt, the robot state written into it as text:
    "Task: <instruction>, State: <b_1> ... <b_D>;\nAction: ", the instruction stripped with '_' and
    newlines as spaces, b_i the bin of state_i (normalized float[D], 'quantile' mode: [-1, 1] between
    the 1st and 99th percentiles) among STATE_BINS equal bins of [-1, 1); values below -1 get -1, values
    from 1 up the last bin."""
    if prompt_format == "plain":
        return instruction
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"config.policy.prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    task = instruction.strip().replace("_", " ").replace("\n", " ")
    if prompt_format == "pi0":
        return task + "\n"
    if state is None:
        raise ValueError("the pi05 prompt format writes the robot state into the prompt; none was given")
    bins = np.digitize(np.asarray(state, np.float32), np.linspace(-1.0, 1.0, STATE_BINS + 1)[:-1]) - 1
    return f"Task: {task}, State: {' '.join(str(int(b)) for b in bins)};\nAction: "


class _Tokenizer:
    """What every tokenizer shares: fixed-length padding and batch encoding around `encode`."""
    pad_id = 0

    def _padded(self, ids, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """ids (at most max_len) -> (ids int32[max_len] padded with pad_id, mask bool[max_len])."""
        out = np.full((max_len,), self.pad_id, np.int32)
        out[: len(ids)] = ids
        mask = np.zeros((max_len,), bool)
        mask[: len(ids)] = True
        return out, mask

    def encode_batch(self, texts, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (ids int32[B, max_len], mask bool[B, max_len])."""
        pairs = [self.encode(t, max_len) for t in texts]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class ByteTokenizer(_Tokenizer):
    """UTF-8 bytes shifted by the special ids; needs no files.

    ids: 0 = pad, 1 = bos, 2 = eos, 3 + byte for each byte.
    """
    pad_id, bos_id, eos_id = 0, 1, 2
    vocab_size = 3 + 256

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (ids int32[max_len], mask bool[max_len]); text longer than fits is cut."""
        body = [3 + b for b in text.encode("utf-8")][: max_len - 2]
        ids = [self.bos_id] + body + [self.eos_id]
        return self._padded(ids, max_len)

    def decode(self, ids) -> str:
        return bytes(int(i) - 3 for i in ids if int(i) >= 3).decode("utf-8", errors="replace")

    @staticmethod
    def text_ids(text: str) -> np.ndarray:
        """The ids of a fixed piece of text, no bos / eos: int32[len(bytes)]."""
        return np.array([3 + b for b in text.encode("utf-8")], np.int32)


class WordTokenizer(_Tokenizer):
    """Whole words from a fixed vocabulary; needs no files. Lower-cased, split on non-alphanumerics.

    ids: 0 = pad, 1 = bos, 2 = eos, 3 = unknown word, 4 + i for vocab[i]. A closed-vocabulary task set
    (the tabletop instructions: ~50 words, <= 12 a sentence) costs 3-4x fewer tokens than bytes.
    """
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, vocab):
        self.vocab = tuple(dict.fromkeys(vocab))
        self._ids = {w: 4 + i for i, w in enumerate(self.vocab)}
        self.vocab_size = 4 + len(self.vocab)

    @staticmethod
    def words(text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", text.lower())

    @classmethod
    def from_texts(cls, texts) -> "WordTokenizer":
        return cls(sorted({w for t in texts for w in cls.words(t)}))

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (ids int32[max_len], mask bool[max_len]); text longer than fits is cut."""
        body = [self._ids.get(w, self.unk_id) for w in self.words(text)][: max_len - 2]
        ids = [self.bos_id] + body + [self.eos_id]
        return self._padded(ids, max_len)

    def decode(self, ids) -> str:
        return " ".join(self.vocab[int(i) - 4] if int(i) >= 4 else "<unk>" for i in ids if int(i) >= 3)


class HFTokenizer(_Tokenizer):
    """Adapter for a Hugging Face tokenizer saved in a local directory (no network access).

    The directory is what `save_pretrained` writes (tokenizer.json, tokenizer_config.json, ...). Ids are
    the tokenizer's own (special tokens added as it is configured to); padding uses its pad token, or id
    0 when it has none (padding is masked out anyway).
    """

    def __init__(self, path: str):
        from transformers import AutoTokenizer  # noqa: PLC0415  (takes seconds to import; only HF tokenizers need it)

        if not os.path.isdir(path):
            raise FileNotFoundError(f"tokenizer directory {path!r} does not exist (config.policy.tokenizer "
                                    "and config.wm.tokenizer name 'byte' or a local Hugging Face tokenizer "
                                    "directory)")
        self.path = path
        self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.pad_id = self._tok.pad_token_id if self._tok.pad_token_id is not None else 0
        self.vocab_size = len(self._tok)

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (ids int32[max_len], mask bool[max_len]); text longer than fits is cut."""
        ids = self._tok(text)["input_ids"][:max_len]
        return self._padded(ids, max_len)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def text_ids(self, text: str) -> np.ndarray:
        """The ids of a fixed piece of text, no special tokens added: int32[n]."""
        return np.asarray(self._tok(text, add_special_tokens=False)["input_ids"], np.int32)

    def save(self, directory: str) -> None:
        """Writes the tokenizer files into `directory` (checkpoint assets)."""
        self._tok.save_pretrained(directory)


class SentencePieceTokenizer(_Tokenizer):
    """A SentencePiece model file, as openpi ships PaliGemma's (paligemma_tokenizer.model): the model's
    own ids with <bos> in front (openpi's add_bos=True); padding with its pad id (0 for PaliGemma)."""

    def __init__(self, model_proto: bytes):
        self.proto = model_proto
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self._sp.vocab_size()
        self.pad_id = max(self._sp.pad_id(), 0)

    @classmethod
    def from_file(cls, path: str) -> "SentencePieceTokenizer":
        with open(path, "rb") as f:
            return cls(f.read())

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (ids int32[max_len], mask bool[max_len]); text longer than fits is cut."""
        return self._padded(self._sp.encode(text, add_bos=True)[:max_len], max_len)

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])


def load_tokenizer(spec: str, texts=()):
    """A tokenizer spec (config.policy.tokenizer) -> tokenizer.

    'byte': ByteTokenizer; 'words:NAME': WordTokenizer over every word of `texts` (the instruction
    set NAME names; vlambpo_jax.loading.make_tokenizer supplies the tabletop one); a path ending in
    '.model': a SentencePiece model file; anything else: a local Hugging Face tokenizer directory.
    """
    if spec == "byte":
        return ByteTokenizer()
    if spec.startswith("words:"):
        if not texts:
            raise ValueError(f"tokenizer {spec!r}: a word tokenizer needs the instruction texts of its "
                             "vocabulary")
        return WordTokenizer.from_texts(texts)
    if spec.endswith(".model"):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"SentencePiece model {spec!r} does not exist (config.policy.tokenizer)")
        return SentencePieceTokenizer.from_file(spec)
    return HFTokenizer(spec)


def load_wm_tokenizer(wm_config):
    """The world model's tokenizer, config.wm.tokenizer: '' (or absent, or 'byte') is ByteTokenizer, whose
    vocabulary models/action_tokens.py extends with action bins and Yes / No; anything else is a local
    Hugging Face tokenizer directory (BAGEL's Qwen2 tokenizer)."""
    spec = wm_config.get("tokenizer", "")
    return ByteTokenizer() if spec in ("", "byte") else HFTokenizer(spec)


def save_tokenizer(tokenizer, directory: str) -> None:
    """Writes what `load_tokenizer_from_assets` needs into `directory` (created)."""
    os.makedirs(directory, exist_ok=True)
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.save(os.path.join(directory, "hf"))
        desc = {"kind": "hf"}
    else:
        desc = tokenizer_assets(tokenizer)
    with open(os.path.join(directory, "tokenizer_kind.json"), "w") as f:
        json.dump(desc, f)


def load_tokenizer_from_assets(directory: str):
    """Inverse of save_tokenizer."""
    with open(os.path.join(directory, "tokenizer_kind.json")) as f:
        desc = json.load(f)
    if desc["kind"] == "hf":
        return HFTokenizer(os.path.join(directory, "hf"))
    return tokenizer_from_assets(desc, directory)


def tokenizer_assets(tokenizer) -> dict:
    """A JSON-able description of the tokenizer for checkpoint assets (HF files embedded as text)."""
    if isinstance(tokenizer, ByteTokenizer):
        return {"kind": "byte"}
    if isinstance(tokenizer, WordTokenizer):
        return {"kind": "words", "vocab": list(tokenizer.vocab)}
    if isinstance(tokenizer, SentencePieceTokenizer):
        return {"kind": "sentencepiece", "model": base64.b64encode(tokenizer.proto).decode("ascii")}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        files = {}
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), encoding="utf-8") as f:
                files[name] = f.read()
    return {"kind": "hf", "files": files}


def tokenizer_from_assets(assets: dict, directory: str):
    """Inverse of tokenizer_assets; HF files are written into `directory` (created) and loaded from it."""
    if assets.get("kind", "byte") == "byte":
        return ByteTokenizer()
    if assets["kind"] == "words":
        return WordTokenizer(assets["vocab"])
    if assets["kind"] == "sentencepiece":
        return SentencePieceTokenizer(base64.b64decode(assets["model"]))
    os.makedirs(directory, exist_ok=True)
    for name, text in assets["files"].items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(text)
    return HFTokenizer(directory)
