"""Catalogs: the shipped ones load; `engine catalog refresh` reads a provider API (a fake)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.catalog import load_catalog
from engine.errors import EngineError, ProviderError
from engine.providers.refresh import refresh_catalog
from engine.spec import load_spec
from tests.fakes.digitalocean import FakeDigitalOcean
from tests.fakes.hcloud import FakeHcloud
from tests.support.cli import engine
from tests.support.http import serve
from tests.support.readme import section


@pytest.mark.parametrize("provider", ["hcloud", "digitalocean", "local"])
def test_shipped_catalogs_are_consistent(provider: str) -> None:
    catalog = load_catalog(provider)
    assert catalog.server_types and catalog.locations and catalog.images
    for server_type in catalog.server_types.values():
        assert set(server_type.prices) <= set(catalog.locations), server_type.name
        assert server_type.cores > 0 and server_type.memory_gb > 0 and server_type.disk_gb > 0


def test_the_local_types_are_the_sizes_the_readme_gives() -> None:
    said = re.search(
        r"\(`small` (\d+) vCPU/(\d+) GB, `medium` (\d+)/(\d+), `large` (\d+)/(\d+);",
        " ".join(section("The local provider").split()),
    )
    assert said, "the README gives no sizes of the local server types"
    types = load_catalog("local").server_types
    sizes = [(types[n].cores, types[n].memory_gb) for n in ("small", "medium", "large")]
    assert [n for pair in sizes for n in pair] == [int(n) for n in said.groups()]


def test_hcloud_refresh_reads_every_page_and_changes_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeHcloud()
    monkeypatch.setenv("FAKE_HCLOUD", fake.token)
    spec = tmp_path / "web.yaml"
    spec.write_text(
        Path("specs/hetzner.yaml").read_text().replace("server_type: cx22", "server_type: cx23")
    )
    with pytest.raises(EngineError):
        load_spec(spec, state_dir=tmp_path)  # cx23 is not in the shipped catalog
    with serve(fake.app()) as url:
        catalog, path = refresh_catalog(
            "hcloud", token_env="FAKE_HCLOUD", state_dir=tmp_path, endpoint=f"{url}/v1"
        )
    assert path == tmp_path / "catalogs" / "hcloud.json"
    assert fake.count("/v1/server_types") == 2  # 65 types, 50 per page
    assert "cx11" not in catalog.server_types  # deprecated
    assert catalog.server_types["cx23"].prices == {"fsn1": 3.49, "nbg1": 3.49, "hel1": 3.49}
    assert catalog.server_types["cpx11"].prices["ash"] == 5.49
    assert catalog.images["debian-12"].architectures == ("arm", "x86")
    assert catalog.load_balancer_types["lb11"].prices["fsn1"] == 5.39
    assert load_catalog("hcloud", tmp_path).server_types.keys() == catalog.server_types.keys()
    with pytest.raises(EngineError) as info:
        load_spec(spec, state_dir=tmp_path)  # now cx23 exists, but hetzner.yaml uses cx32
    assert "cx32" in str(info.value)


def test_the_command_reads_hcloud_token_and_writes_under_dot_engine(tmp_path: Path) -> None:
    fake = FakeHcloud()
    with serve(fake.app()) as url:
        refresh = ("catalog", "refresh", "hcloud", "--endpoint", f"{url}/v1")
        result = engine(*refresh, cwd=tmp_path, env={"HCLOUD_TOKEN": fake.token})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {tmp_path / '.engine' / 'catalogs' / 'hcloud.json'}: ")
    shown = engine("catalog", "show", "hcloud", cwd=tmp_path)
    assert "cx23" in shown.stdout  # the refreshed copy is the one in use
    assert fake.token not in result.stdout + result.stderr + shown.stdout


@pytest.mark.parametrize(
    ("endpoint", "said"),
    [
        ("garbage", "it does not start with http:// or https://"),
        ("http://127.0.0.1:99999", "its port 99999 is not a number from 1 to 65535"),
        ("http://", "it names no host"),
        ("http://a b/v1", "it contains a space"),
    ],
)
def test_refresh_refuses_an_endpoint_it_cannot_connect_to(
    endpoint: str, said: str, tmp_path: Path
) -> None:
    refresh = ("catalog", "refresh", "hcloud", "--endpoint", endpoint)
    result = engine(*refresh, "--state-dir", str(tmp_path), env={"HCLOUD_TOKEN": "x"})
    assert result.returncode == 2, result.stderr
    assert f"argument --endpoint: '{endpoint}' is not a URL the engine can connect to: " in (
        result.stderr
    )
    assert said in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())


def test_refresh_refuses_an_endpoint_with_a_password_without_showing_it(tmp_path: Path) -> None:
    endpoint = "https://proxy:s3cret-pw@api.example.com/v1"
    refresh = ("catalog", "refresh", "hcloud", "--endpoint", endpoint)
    result = engine(*refresh, "--state-dir", str(tmp_path), env={"HCLOUD_TOKEN": "x"})
    assert result.returncode == 2, result.stderr
    assert (
        "argument --endpoint: the value is not a URL the engine can connect to: it holds a user "
        "name or password before its host" in result.stderr
    )
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert not any(tmp_path.iterdir())


def test_hcloud_refresh_with_a_bad_token_names_the_problem_not_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_HCLOUD", "wrong-token-value-123456")
    with serve(FakeHcloud().app()) as url, pytest.raises(ProviderError) as info:
        refresh_catalog("hcloud", token_env="FAKE_HCLOUD", state_dir=tmp_path, endpoint=f"{url}/v1")
    assert "unauthorized" in str(info.value)
    assert "wrong-token-value" not in str(info.value)
    assert not (tmp_path / "catalogs").exists()


def test_refresh_without_the_token_variable_says_which_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOPE_TOKEN", raising=False)
    with pytest.raises(EngineError, match="NOPE_TOKEN is not set"):
        refresh_catalog("hcloud", token_env="NOPE_TOKEN", state_dir=tmp_path)


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("hcloud_" + "9a8b7c6d5e4f3a2b1c0d" * 3, "--token-env: this looks like an API token"),
        ("a1b2-c3d4.e5f6", "--token-env takes the name of an environment variable"),
    ],
)
def test_a_token_given_as_token_env_is_refused_unseen(
    tmp_path: Path, given: str, said: str
) -> None:
    result = engine(
        "catalog", "refresh", "hcloud", "--token-env", given, "--endpoint", "http://127.0.0.1:9",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {said}") and "HCLOUD_TOKEN" in result.stderr
    assert given[:10] not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".engine").exists()


@pytest.mark.parametrize(
    ("provider", "fake", "variable", "path"),
    [
        ("hcloud", FakeHcloud, "HCLOUD_TOKEN", "/v1"),
        ("digitalocean", FakeDigitalOcean, "DIGITALOCEAN_TOKEN", ""),
    ],
)
def test_a_token_with_a_line_break_is_refused_before_any_request(
    tmp_path: Path,
    provider: str,
    fake: type[FakeHcloud | FakeDigitalOcean],
    variable: str,
    path: str,
) -> None:
    api = fake()
    first, second = "abcdefghijkl1234mnopqrst", "WXYZuvwx5678yzabCDEF9012"
    with serve(api.app()) as url:
        refresh = ("catalog", "refresh", provider, "--endpoint", f"{url}{path}")
        result = engine(*refresh, cwd=tmp_path, env={variable: f"{first}\r\n{second}"})
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: the API token in {variable} has a line break inside")
    assert api.requests == []
    written = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
    for part in (first, second):
        assert part not in result.stdout + result.stderr + written


def test_digitalocean_refresh_pages_by_200(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDigitalOcean()
    monkeypatch.setenv("FAKE_DO", fake.token)
    with serve(fake.app()) as url:
        catalog, _ = refresh_catalog(
            "digitalocean", token_env="FAKE_DO", state_dir=tmp_path, endpoint=url
        )
    assert fake.count("/v2/sizes") == 2  # 252 sizes, 200 per page
    assert catalog.server_types["s-2vcpu-4gb"].memory_gb == 4
    assert catalog.server_types["s-2vcpu-4gb"].prices["fra1"] == 24.0
    assert set(catalog.locations) == {"nyc3", "ams3", "fra1", "sgp1"}
    assert "debian-12-x64" in catalog.images


def test_a_damaged_refreshed_catalog_is_reported(tmp_path: Path) -> None:
    (tmp_path / "catalogs").mkdir()
    (tmp_path / "catalogs" / "local.json").write_text("{not json")
    with pytest.raises(EngineError, match="damaged"):
        load_catalog("local", tmp_path)


@pytest.mark.parametrize("content", ["{broken", "{}", "[]", "", None], ids=repr)
def test_every_command_that_reads_a_damaged_refreshed_catalog_says_so_alike(
    content: str | None, tmp_path: Path
) -> None:
    damaged = tmp_path / "catalogs" / "hcloud.json"
    damaged.parent.mkdir()
    if content is None:
        damaged.mkdir()  # a folder in its place is no catalog either
    else:
        damaged.write_text(content)
    said = f"error: {damaged}: the refreshed hcloud catalog is damaged ("
    for args in (
        ("validate", "specs/hetzner.yaml"),
        ("preview", "specs/hetzner.yaml"),
        ("catalog", "show", "hcloud"),
    ):
        result = engine(*args, "--state-dir", str(tmp_path), env={"HCLOUD_TOKEN": "x"})
        assert result.returncode == 1, (args, result.stdout + result.stderr)
        assert result.stderr.startswith(said), (args, result.stderr)
        assert "delete it or run `engine catalog refresh hcloud` again" in result.stderr
        assert "internal error" not in result.stderr
    as_json = engine(
        "validate", "--format", "json", "specs/hetzner.yaml", "--state-dir", str(tmp_path)
    )
    (error,) = json.loads(as_json.stdout)["files"][0]["errors"]
    assert (as_json.returncode, error["code"]) == (1, "state_error")
    assert f"error: {error['message']}".startswith(said)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["catalogs", "hcloud.json"]
