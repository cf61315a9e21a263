"""The models: pure Flax modules and the functions that train and evaluate them. They know no simulator
and no dataset: vocabularies, statistics and data come in as arguments.

policy.py, vit.py, layers.py, flow_sampling.py   the pi0.5-style VLA policy (flow-matching action chunks)
policy_train.py                                  its SFT step (flow matching + grounding loss, AdamW, EMA)
grounding.py                                     the grounding head and loss of SFT co-training
world_model.py, umm.py, sequence_layout.py,      the UMM world model (rectified flow over VAE latents,
  vae.py, action_tokens.py                         Mixture-of-Transformers, view decoding, Yes/No reward)
wm_training.py, state_probe.py                   its optimizer, held-out evaluator and consistency probe
qwen2_import.py                                  Qwen2 weights from a local checkpoint into the backbone
"""
