"""The engine's side of the on-server agent (the agent itself is the package in agent/).

image     builds the agent's image from agent/ with a wheelhouse made on the host
endpoint  how to reach a server's agent: address, port, pinned fingerprint, token
client    an HTTPS client that pins the agent's certificate, and parallel metrics

How the agent's container is started and the config it reads are install's:
engine/install/agent.py.
"""
