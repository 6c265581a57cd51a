"""The local provider: servers as Docker containers through docker-py, on one machine.

dockerd.py     find or start a Docker engine; `daemon_client`, the one way to a client
images.py      the base and golden images (golden/ is the golden image's build context)
machines.py    one container that behaves like a cloud VM (NoCloud seed, limits)
driver.py      the machines of one fleet on its own bridge network
inventory.py   the fleet's machines as ActualServers
backend.py     the Backend `engine up`, `destroy` and `engine server` drive
"""
