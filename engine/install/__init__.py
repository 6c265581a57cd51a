"""Installing servers over SSH: Docker, the system baseline and the agent.

Where each part of the install is:

    seam.py       what the control plane's install job calls: the Installer protocol, the
                  InstallTarget it gets (install_target, ssh_address) and the InstallResult
    installer.py  FleetInstaller, the Installer `engine up` wires in: a target plus the fleet's
                  spec and keys become an InstallHost with its agent, then install_hosts
    agent.py      how the agent's container is started on a server (`docker run` options and
                  why) and the config file it reads (pure)
    deploykey.py  the engine's own SSH key per fleet, which the install logs in with
    digest.py     install_digest: the install settings, authorized keys, deploy code, agent
                  image and control-plane address, as the one value the diff compares to
                  mark a server for reinstall (computed by the orchestrator)
    model.py      the values an install is asked for and reports (InstallHost,
                  InstallSettings, AgentRun, HostResult...), as JSON across processes
    runner.py     install_hosts(hosts, settings, dry_run=False): one child process per host,
                  a bounded number at a time, each host locked while its child lives
    sharing.py    a copied agent image goes from the engine to one server of a fleet, then
                  from server to server: who fetches from whom, and the engine's archive
    worker.py     the child's side (`python -m engine.install`, __main__.py): pyinfra runs
                  the deploys on one host with its pinned host keys

The deploys themselves (the pyinfra operations: docker, system, agent) are the top-level
`deploys` package. Only worker.py loads pyinfra and only sharing.py loads Docker's SDK (to read
and save the agent image the servers get copied), both when they run; importing this package
loads neither.
"""
