"""Tiny random pi0.5 checkpoints made with transformers' PI05 (the parity reference), a tiny word-level
tokenizer that writes pi0.5's prompts, and openpi-style normalization statistics, for the tests.
Needs torch and transformers (the test extra)."""
import json
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors


def tiny_config(vocab: int, image_token: int, image_size: int = 16, patch: int = 4, chunk: int = 5,
                action_pad: int = 8) -> "transformers.PI05Config":
    return transformers.PI05Config(
        vlm_config=dict(
            model_type="paligemma", projection_dim=64, image_token_id=image_token,
            text_config=dict(model_type="gemma", hidden_size=64, num_hidden_layers=2, intermediate_size=96,
                             num_attention_heads=4, num_key_value_heads=1, head_dim=16, vocab_size=vocab),
            vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=48,
                               patch_size=patch, image_size=image_size, num_hidden_layers=2, num_attention_heads=2,
                               vision_use_head=False)),
        dit_config=dict(model_type="gemma", hidden_size=48, num_hidden_layers=2, intermediate_size=80,
                        num_attention_heads=4, num_key_value_heads=1, head_dim=16),
        chunk_size=chunk, max_action_dim=action_pad, num_inference_steps=3)


def save_random(config, path):
    """A random transformers PI05 saved to `path`; its norms and adaRMS layers (zero at init) and biases
    randomized, so a mis-mapped tensor shows."""
    torch.manual_seed(0)
    model = transformers.PI05ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    return model


def save_prompt_tokenizer(path, words=(), size: int = 300) -> "transformers.PreTrainedTokenizerFast":
    """A word-level tokenizer of exactly `size` ids that adds <bos> in front, as Gemma's does: the
    special tokens, pi0.5's prompt words and punctuation, the 256 state bins and `words`."""
    vocab = ["<pad>", "<unk>", "<bos>", "<eos>", "Task", "State", "Action", ":", ",", ";", "-", *words,
             *map(str, range(256))]
    vocab += [f"w{i}" for i in range(size - len(vocab))]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>",
                                                bos_token="<bos>", eos_token="<eos>")
    fast.save_pretrained(str(path))
    return fast


def save_openpi_stats(path, asset_id: str, state_dim: int, action_dim: int, seed: int = 0) -> dict:
    """<path>/assets/<asset_id>/norm_stats.json in openpi's layout; returns the table."""
    rng = np.random.default_rng(seed)

    def entry(dim):
        q01 = rng.uniform(-1.0, 0.0, dim)
        q99 = q01 + rng.uniform(0.5, 1.5, dim)
        return {"mean": ((q01 + q99) / 2).tolist(), "std": ((q99 - q01) / 4).tolist(), "q01": q01.tolist(),
                "q99": q99.tolist()}

    table = {"norm_stats": {"state": entry(state_dim), "actions": entry(action_dim)}}
    out = Path(path) / "assets" / asset_id / "norm_stats.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table))
    return table["norm_stats"]
