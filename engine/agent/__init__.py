"""The engine's side of the on-server agent (the agent itself is the package in agent/).

run       the agent container's options and its config file (pure; the deploy uses them)
image     builds the agent's image from agent/ with a wheelhouse made on the host
endpoint  how to reach a server's agent: address, port, pinned fingerprint, token
client    an HTTPS client that pins the agent's certificate, and parallel metrics
"""
