"""Serving a trained policy to robots over openpi's websocket protocol (`python -m vlambpo_jax.serve`).

  wire.py     msgpack-numpy messages, the format openpi_client.msgpack_numpy reads and writes
  robot.py    per-robot observation mapping (client keys -> policy views, prompt, state)
  batcher.py  one inference thread batching concurrent requests, each with its own seed
  server.py   the websocket server: metadata on connect, API key, /healthz, error replies; build()
  __main__.py the command line
"""
