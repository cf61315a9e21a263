"""A pi0.5 checkpoint as released, served as is: transformers' PI05Processor and model are the reference
for the prompt (state binned into the text), the statistics (openpi's norm_stats.json, LeRobot's
normalizer files) and the actions an openpi client gets back."""
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # test extra: torch (CPU wheel)
transformers = pytest.importorskip("transformers")
openpi_client = pytest.importorskip("openpi_client")

import jax  # noqa: E402
from openpi_client import websocket_client_policy  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from configs import bridge  # noqa: E402
from tests.helpers import pi05_reference  # noqa: E402
from vlambpo_jax import loading  # noqa: E402
from vlambpo_jax.data import imported_stats, normalization  # noqa: E402
from vlambpo_jax.data.tokenizer import policy_prompt  # noqa: E402
from vlambpo_jax.errors import UserError  # noqa: E402
from vlambpo_jax.models import pi05_import  # noqa: E402
from vlambpo_jax.serve import server as server_lib  # noqa: E402

VOCAB, SIZE, PATCH = 300, 16, 4
WORDS = ("pick", "up", "the", "red", "cube", "put", "bowl")
ASSET = "physical-intelligence/libero"


def _processor(tokenizer_dir, stats):
    image_processor = transformers.SiglipImageProcessor(size={"height": SIZE, "width": SIZE})
    image_processor.image_seq_length = (SIZE // PATCH) ** 2
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    return transformers.PI05Processor(image_processor=image_processor, tokenizer=tokenizer,
                                      state_q01=stats["state"]["q01"], state_q99=stats["state"]["q99"],
                                      chunk_size=5, max_state_dim=8)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A pi0.5 directory as released for LIBERO (weights, config.json, openpi statistics) and a
    tokenizer directory."""
    root = tmp_path_factory.mktemp("pi05_release")
    ckpt, tok = root / "pi05_libero", root / "tokenizer"
    pi05_reference.save_prompt_tokenizer(tok, WORDS, VOCAB)
    model = pi05_reference.save_random(pi05_reference.tiny_config(VOCAB, VOCAB, SIZE, PATCH), ckpt)
    stats = pi05_reference.save_openpi_stats(ckpt, ASSET, state_dim=8, action_dim=7)
    return model, ckpt, tok, stats


def _obs(seed: int):
    rng = np.random.default_rng(seed)
    state = rng.uniform(-1.5, 1.5, 8).astype(np.float32)
    state[0] = -9.0                                     # far below q01: bin -1, which clipping would lose
    return {"observation/image": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
            "observation/state": state, "prompt": " put the red_cube\nup ", "seed": seed}


def test_prompt_tokens_match_transformers_processor(release):
    _, ckpt, tok, stats = release
    stats_ours, mode = imported_stats.load_checkpoint_stats(str(ckpt))
    assert mode == "quantile"
    obs = _obs(3)
    state = normalization.normalize(obs["observation/state"], stats_ours["state"], mode)
    text = policy_prompt(obs["prompt"], state, "pi05")
    assert text.startswith("Task: put the red cube up, State: -1 ") and text.endswith(";\nAction: ")
    ours = loading.make_tokenizer(str(tok)).encode(text, 64)
    ref = _processor(str(tok), stats)(images=[[obs["observation/image"], obs["observation/wrist_image"]]],
                                      text=[obs["prompt"]], state=[obs["observation/state"]],
                                      padding="longest", return_tensors="pt")
    ids = ref["input_ids"][0][ref["attention_mask"][0].bool()].numpy()
    ids = ids[2 * (SIZE // PATCH) ** 2:]                # after the image placeholders
    np.testing.assert_array_equal(ours[0][ours[1]], ids)
    assert (ids == 1).sum() == 0                         # every word known: no <unk> hides a difference


def test_lerobot_normalizer_files_read_like_openpi_json(release, tmp_path):
    _, ckpt, _, stats = release
    lerobot = {f"observation.state.{k}": np.asarray(v, np.float32) for k, v in stats["state"].items()}
    actions = {f"action.{k}": np.asarray(v, np.float32) for k, v in stats["actions"].items()}
    save_file(lerobot | {"observation.images.image.mean": np.zeros(3, np.float32)},
              str(tmp_path / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
    save_file(actions, str(tmp_path / "policy_postprocessor_step_0_unnormalizer_processor.safetensors"))
    a, mode_a = imported_stats.load_checkpoint_stats(str(tmp_path))
    b, mode_b = imported_stats.load_checkpoint_stats(str(ckpt))
    assert mode_a == mode_b == "quantile"
    for key in ("state", "action"):
        for field in ("mean", "std", "q01", "q99"):
            np.testing.assert_allclose(getattr(a[key], field), getattr(b[key], field), rtol=1e-6)
    json_file = ckpt / "assets" / ASSET / "norm_stats.json"
    np.testing.assert_allclose(imported_stats.load_checkpoint_stats(str(json_file))[0]["action"].q99,
                               b["action"].q99)
    several = tmp_path / "pi05_base"
    for asset in ("droid", ASSET):
        (several / "assets" / asset).mkdir(parents=True)
        (several / "assets" / asset / "norm_stats.json").write_text(json_file.read_text())
    with pytest.raises(UserError, match="several robots.*droid.*physical-intelligence/libero"):
        imported_stats.load_checkpoint_stats(str(several))
    assert imported_stats.load_checkpoint_stats(str(several), "droid")[1] == "quantile"
    with pytest.raises(UserError, match="no normalization statistics"):
        imported_stats.load_checkpoint_stats(str(tmp_path / "nothing"))


def test_openpi_client_gets_transformers_actions(release):
    """LIBERO request -> our server (pi0.5 prompt, imported statistics and weights) -> actions equal to
    transformers' PI05 sampling the same noise from the processor's inputs, unnormalized by hand."""
    model, ckpt, tok, stats = release
    config = bridge.get_config("pi05")
    config.policy.tokenizer = str(tok)
    config.data.max_text_len = 64
    config.policy.dtype = "float32"       # the release config computes in bf16; parity is checked in f32
    server = server_lib.build(ckpt, config=config, norm_stats_asset="", robot_config="libero", batch_sizes=(1,),
                              port=0, log_fn=lambda m: None)
    meta_expected = {"action_horizon": 5, "action_dim": 7, "state_dim": 8, "prompt_format": "pi05"}
    with server_lib.ServerThread(server) as thread:
        client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", thread.port)
        assert {k: client.get_server_metadata()[k] for k in meta_expected} == meta_expected
        obs = _obs(7)
        actions = client.infer(obs)["actions"]
    assert actions.shape == (5, 7)

    noise = np.asarray(jax.random.normal(jax.random.key(obs["seed"]), (1, 5, 8)))
    ref_in = _processor(str(tok), stats)(images=[[obs["observation/image"], obs["observation/wrist_image"]]],
                                         text=[obs["prompt"]], state=[obs["observation/state"]],
                                         padding="longest", return_tensors="pt")
    with torch.no_grad():
        normalized = model.sample_actions(**{k: v for k, v in ref_in.items() if k != "state"},
                                          noise=torch.tensor(noise), num_steps=10).numpy()[0, :, :7]
    q01, q99 = (np.asarray(stats["actions"][k], np.float32) for k in ("q01", "q99"))
    expected = (normalized + 1.0) / 2.0 * (q99 - q01) + q01
    np.testing.assert_allclose(actions, expected, atol=1e-4, rtol=0)
    assert np.abs(normalized).max() > 0.1
    json.dumps(client.get_server_metadata())             # the metadata stays plain JSON


def test_openpi_release_serves_the_same_actions(release, tmp_path):
    """The same weights and statistics in openpi's own layout (orbax params, assets/<id>/norm_stats.json;
    no chunk length stored, so the config's) answer the same request with the same actions."""
    _, ckpt, tok, _ = release
    openpi_dir = tmp_path / "pi05_libero_openpi"
    tensors = pi05_import.canonical_names(pi05_import.read_tensors(str(ckpt)))
    pi05_reference.save_openpi_params(tensors, openpi_dir, heads=4, vit_heads=2)
    shutil.copytree(ckpt / "assets", openpi_dir / "assets")
    config = bridge.get_config("pi05")
    config.policy.update(dict(tokenizer=str(tok), dtype="float32"))
    config.data.max_text_len, config.chunk_size = 64, 5
    answers = []
    for path in (ckpt, openpi_dir):
        server = server_lib.build(path, config=config, robot_config="libero", batch_sizes=(1,), port=0,
                                  log_fn=lambda m: None)
        with server_lib.ServerThread(server) as thread:
            client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", thread.port)
            answers.append(client.infer(_obs(5))["actions"])
    np.testing.assert_allclose(answers[1], answers[0], atol=1e-5, rtol=0)
