"""The RLDS data layer.

rlds_writer    episodes -> a TFDS/RLDS dataset directory (array_record without TensorFlow, or tfrecord)
rlds_reader    dataset directory -> standardized episodes -> shuffled, host-sharded training batches
standardize    raw episodes of each layout (generic, RAIL Bridge, OXE Bridge) -> one validated format
bridge         BridgeData V2 feature spec and gripper binarization
normalization  streaming statistics, cached JSON, normalize/unnormalize (numpy and jax)
inspect_stage  the pipeline stage 'data' (statistics + batch summary)
config_rules   checks of config.data
errors         DataError (names dataset, episode, feature) and the optional TensorFlow import
synthetic      random episodes for tests
"""
