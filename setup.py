"""vlambpo_jax: world-model-based RL fine-tuning (VLA-MBPO) of VLA policies in JAX/Flax."""
import setuptools

# Lower bounds are the versions the test suite ran with (see README "Install").
INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "chex>=0.1.92",
    "transformers>=5.25.0",
    "tokenizers>=0.23.3",
    "sentencepiece>=0.2.3",  # PaliGemma's tokenizer as openpi ships it (a .model file)
    "safetensors>=0.8.0",
    "tensorflow-datasets>=4.9.10",
    "array-record>=0.8.6",
    "mujoco>=4.0.0",
    "mujoco-mjx>=3.17.0",
    "ml-collections>=1.1.0",
    "absl-py>=2.5.1",
    "numpy>=2.0",
    "pillow>=13.0.0",
    "imageio>=2.38.1",
    "matplotlib>=3.11.2",
    "tensorboardX>=2.6.5",
    "tqdm>=4.70.1",
    "dm-pix>=0.4.5",
    "websockets>=17.4",  # vlambpo_jax.serve (openpi websocket protocol)
    "msgpack>=1.2.4",
]

EXTRAS = {
    # The real BridgeData V2 release is tfrecord, which TFDS reads only through TensorFlow.
    "bridge": ["tensorflow-cpu>=2.21.0"],
    "wandb": ["wandb"],
}
EXTRAS["test"] = EXTRAS["bridge"] + [
    "pytest>=9.2.0",
    "pytest-xdist>=3.8.0",
    "scipy>=1.13",
    # Reference implementation for the Qwen2 port's parity test. Pinned exactly to the CPU build this
    # project's machines carry as a local wheel; from plain PyPI it is the CUDA build (README, Install).
    "torch==2.13.0",
    # Reference for the FLUX VAE's parity test (AutoencoderKL and its converter of FLUX's tensor names).
    "diffusers>=0.42.1",
    # openpi-client's dependency; openpi-client itself is installed with --no-deps (README, Install).
    "dm-tree>=0.1.10",
    # The linter CI runs before the tests (its settings: pyproject.toml).
    "ruff>=0.17",
]

setuptools.setup(
    name="vlambpo_jax",
    version="0.1.0",
    description=__doc__,
    packages=setuptools.find_packages(include=["vlambpo_jax", "vlambpo_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
