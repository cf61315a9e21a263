"""The RLDS data layer (the `data` stage that inspects a dataset is vlambpo_jax/stages/data.py).

rlds_writer    episodes -> a TFDS/RLDS dataset directory (array_record without TensorFlow, or tfrecord)
rlds_reader    dataset directory -> standardized episodes -> shuffled, host-sharded training batches
standardize    raw episodes of each layout (generic, RAIL Bridge, OXE Bridge) -> one validated format
bridge         BridgeData V2 feature spec and gripper binarization
normalization  streaming statistics, cached JSON, normalize/unnormalize (numpy and jax)
tokenizer      text -> fixed-length ids: bytes, a closed word vocabulary, or a local Hugging Face tokenizer
errors         DataError (names dataset, episode, feature) and the optional TensorFlow import
synthetic      random episodes for tests
"""
