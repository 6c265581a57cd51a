"""The local provider's images: built from the Debian mirror, cached by recipe, and bootable."""

from __future__ import annotations

import json
import socket
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from deploys.docker import daemon_json
from engine.model import DockerInstall
from engine.providers.local.dockerd import PrivateDaemon
from engine.providers.local.images import (
    GOLDEN_CONTEXT,
    context_hash,
    context_tar,
    ensure_golden_image,
    ensure_machine_image,
)
from engine.providers.local.machines import MachineSpec, create_machine, write_seed
from tests.support.cli import engine
from tests.support.wait import wait_until


def test_golden_image_is_cached_by_recipe(docker_client: Any, golden_image: str) -> None:
    messages: list[str] = []
    assert ensure_golden_image(docker_client, say=messages.append) == golden_image
    assert messages == []  # nothing rebuilt
    assert golden_image.endswith(":" + golden_image.rsplit(":", 1)[1])
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "golden"
        subprocess.run(["cp", "-a", str(GOLDEN_CONTEXT), str(copy)], check=True)
        same = context_hash(copy)
        # A checkout made with another umask builds the same image.
        (copy / "daemon.json").chmod(0o664)
        copy.chmod(0o775)
        assert context_hash(copy) == same
        # The execute bit is what git keeps: it changes the recipe.
        (copy / "daemon.json").chmod(0o755)
        assert context_hash(copy) != same
        (copy / "daemon.json").chmod(0o644)
        (copy / "boot.sh").write_text((copy / "boot.sh").read_text() + "\n# changed\n")
        assert context_hash(copy) != same


def test_files_of_a_build_context_get_the_modes_git_keeps_whatever_the_umask(
    tmp_path: Path,
) -> None:
    context = tmp_path / "context"
    (context / "bin").mkdir(parents=True)
    (context / "settings.json").write_text("{}")
    (context / "settings.json").chmod(0o664)
    (context / "bin" / "run.sh").write_text("#!/bin/sh\n")
    (context / "bin" / "run.sh").chmod(0o775)
    (context / "bin").chmod(0o770)
    with tarfile.open(fileobj=context_tar(context)) as tar:
        modes = {member.name: (member.mode, member.uname) for member in tar.getmembers()}
    assert modes == {
        ".": (0o755, "root"),
        "./bin": (0o755, "root"),
        "./bin/run.sh": (0o755, "root"),
        "./settings.json": (0o644, "root"),
    }


def test_docker_in_the_golden_image_has_the_settings_the_install_writes_by_default() -> None:
    baked = (GOLDEN_CONTEXT / "daemon.json").read_text()
    assert baked == daemon_json(DockerInstall())


def test_engine_local_image_shows_the_golden_image(
    dockerd: PrivateDaemon, golden_image: str
) -> None:
    result = engine("local", "image", env={"DOCKER_HOST": dockerd.url}, timeout=600)
    assert (result.returncode, result.stderr) == (0, "")  # built already: nothing to say
    tag, _id, size, unit, built, _when = result.stdout.split()
    assert (tag, unit, built) == (golden_image, "MB", "built") and int(size) > 0


def test_a_golden_container_boots_with_cloud_init_and_serves_ssh(
    docker_client: Any, golden_image: str, tmp_path: Path
) -> None:
    seed = tmp_path / "seed"
    write_seed(
        seed,
        instance_id="i-test-1",
        hostname="boot-1",
        user_data="#cloud-config\nruncmd:\n  - [sh, -c, 'echo booted > /run/booted']\n",
    )
    container = create_machine(
        docker_client,
        MachineSpec(name="boot-1", hostname="boot-1", image=golden_image, seed_dir=seed),
    )
    try:
        result = container.exec_run(["cloud-init", "status", "--wait", "--long"])
        assert b"status: done" in result.output, result.output.decode()
        assert container.exec_run(["cat", "/run/booted"]).output == b"booted\n"
        keys = container.exec_run(["sh", "-c", "ls /etc/ssh/ssh_host_*_key.pub"]).output.split()
        assert len(keys) == 2  # ecdsa and ed25519 (golden/99-fleet-local.cfg)
        data = json.loads(container.exec_run(["cloud-init", "query", "--all"]).output)
        assert data["v1"]["instance_id"] == "i-test-1"
        container.reload()
        address = container.attrs["NetworkSettings"]["IPAddress"]
        with socket.create_connection((address, 22), timeout=10) as conn:
            assert conn.recv(8) == b"SSH-2.0-"
        docker_service = container.exec_run(["/etc/init.d/docker", "status"])
        assert docker_service.exit_code == 0, docker_service.output.decode()
    finally:
        container.remove(force=True, v=True)
        docker_client.volumes.get("boot-1-docker").remove()


def test_a_machine_starts_with_the_preloaded_images_in_its_own_docker(
    docker_client: Any, golden_image: str, busybox_image: str, tmp_path: Path
) -> None:
    assert ensure_machine_image(docker_client, golden_image, (), say=print) == golden_image
    image = ensure_machine_image(docker_client, golden_image, (busybox_image,), say=print)
    messages: list[str] = []
    assert ensure_machine_image(docker_client, golden_image, (busybox_image,), messages.append)
    assert messages == []  # built once
    seed = tmp_path / "seed"
    write_seed(seed, instance_id="i-test-2", hostname="boot-2", user_data="")
    container = create_machine(
        docker_client, MachineSpec(name="boot-2", hostname="boot-2", image=image, seed_dir=seed)
    )
    try:
        wait_until(lambda: container.exec_run(["docker", "info"]).exit_code == 0, what="docker")
        found = container.exec_run(["docker", "image", "inspect", "-f", "{{.Id}}", busybox_image])
        assert found.output.decode().strip() == docker_client.images.get(busybox_image).id
        ran = container.exec_run(["docker", "run", "--rm", busybox_image, "echo", "preloaded"])
        assert ran.output == b"preloaded\n", ran.output.decode()
        # Each machine's engine is its own: nothing of the builder's but its images.
        assert container.exec_run(["docker", "ps", "-aq"]).output == b""
    finally:
        container.remove(force=True, v=True)
        docker_client.volumes.get("boot-2-docker").remove()


def test_an_app_image_the_engines_docker_lacks_is_named_before_the_servers_pull_it(
    dockerd: PrivateDaemon, busybox_image: str, tmp_path: Path
) -> None:
    # The only word was the server's failure to reach Docker Hub for it.
    from engine.apps.deploy import image_copies
    from engine.spec import load_spec

    spec = tmp_path / "fleet.yaml"
    demo = (Path(__file__).parents[2] / "specs" / "demo.yaml").read_text()
    spec.write_text(
        demo
        + "apps:\n"
        + f"  - {{ name: here, image: '{busybox_image}', on: [web] }}\n"
        + "  - { name: gone, image: 'fleet-test/nowhere:1', on: [web] }\n"
    )
    said: list[str] = []
    with image_copies(load_spec(spec), dockerd.url, said.append) as copies:
        assert copies is not None
        assert copies.source(busybox_image) is not None
        assert copies.source("fleet-test/nowhere:1") is None
    assert said == [
        "the image fleet-test/nowhere:1 is not in the engine's Docker, so the servers pull it "
        "from its registry; if it is in none, build or tag it in the engine's Docker"
    ]
