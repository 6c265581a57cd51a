"""The pull-request preview: the script that previews changed specs, and the sticky-comment
logic the workflow runs (in Node, as actions/github-script does) against a fake GitHub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cli import ROOT

SCRIPT = ROOT / ".github" / "scripts" / "preview-specs.sh"
STICKY = ROOT / ".github" / "scripts" / "sticky-comment.js"
HETZNER = yaml.safe_load((ROOT / "specs" / "hetzner.yaml").read_text())


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _spec(repo: Path, name: str, spec: dict[str, Any] | str) -> None:
    path = repo / "specs" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))


def test_the_script_previews_each_changed_spec_without_credentials(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q", "-b", "main")
    _spec(tmp_path, "web.yaml", HETZNER)
    _spec(tmp_path, "still.yaml", dict(HETZNER, name="still"))
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "base")
    base = _git(tmp_path, "rev-parse", "HEAD")
    _git(tmp_path, "checkout", "-q", "-b", "change")
    grown = json.loads(json.dumps(HETZNER))
    grown["groups"][1]["count"] = 3
    _spec(tmp_path, "web.yaml", grown)
    _spec(tmp_path, "blog.yaml", dict(HETZNER, name="blog"))
    _spec(tmp_path, "broken.yaml", "apiVersion: fleet/v1\nkind: Fleet\nname: x\n")
    (tmp_path / "README.md").write_text("not a spec\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "change")
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "BASE": base,
        "MODE": "ref",
        "OUT": str(tmp_path / "out"),
        "HOME": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stdout + result.stderr  # broken.yaml fails
    assert "wrote 3 comment bodies for 3 changed spec(s)" in result.stdout
    bodies = [p.read_text() for p in sorted((tmp_path / "out").glob("comment-*.md"))]
    markers = [body.splitlines()[0] for body in bodies]
    assert markers == [
        "<!-- fleet-engine-preview: specs/blog.yaml part 1/1 -->",
        "<!-- fleet-engine-preview: specs/broken.yaml part 1/1 -->",
        "<!-- fleet-engine-preview: specs/web.yaml part 1/1 -->",
    ]
    blog, broken, web = bodies
    assert "**5 to create; 0 unchanged; resources: 7 to create**" in blog
    assert "❌ the preview failed" in broken and "error[missing_key]" in broken
    assert "**1 to create; 5 unchanged**" in web and "`worker-3`" in web
    assert not list((tmp_path / "out").glob("*.txt"))


_HARNESS = """
const { upsertComments } = require(process.argv[process.argv.length - 1]);
const scenario = JSON.parse(require("fs").readFileSync(0, "utf8"));
let comments = scenario.comments;
let next = 1000;
const calls = [];
const issues = {
  listComments: async () => ({ data: comments }),
  createComment: async ({ body }) => {
    calls.push("create");
    comments.push({ id: next++, body, user: { login: "github-actions[bot]" } });
  },
  updateComment: async ({ comment_id, body }) => {
    calls.push(`update ${comment_id}`);
    comments.find((c) => c.id === comment_id).body = body;
  },
  deleteComment: async ({ comment_id }) => {
    calls.push(`delete ${comment_id}`);
    comments = comments.filter((c) => c.id !== comment_id);
  },
};
const github = {
  rest: { issues },
  paginate: async (method, params) => (await method(params)).data,
};
upsertComments({ github, owner: "o", repo: "r", issue_number: 7, bodies: scenario.bodies })
  .then((summary) => console.log(JSON.stringify({ summary, calls, comments })))
  .catch((error) => { console.error(error.message); process.exit(3); });
"""

BOT = {"login": "github-actions[bot]"}


def _body(spec: str, part: int, parts: int, text: str) -> str:
    return f"<!-- fleet-engine-preview: {spec} part {part}/{parts} -->\n\n{text}\n"


def _sticky(comments: list[dict[str, Any]], bodies: list[str]) -> dict[str, Any]:
    result = subprocess.run(
        ["node", "-e", _HARNESS, "--", str(STICKY)],
        input=json.dumps({"comments": comments, "bodies": bodies}),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NODE_OPTIONS": ""},
    )
    assert result.returncode == 0, result.stderr
    outcome: dict[str, Any] = json.loads(result.stdout)
    return outcome


def test_the_first_preview_creates_its_comments() -> None:
    human = {"id": 1, "body": "looks good", "user": {"login": "alice"}}
    outcome = _sticky([human], [_body("a.yaml", 1, 2, "one"), _body("a.yaml", 2, 2, "two")])
    assert outcome["summary"] == {"created": 2, "updated": 0, "unchanged": 0, "deleted": 0}
    assert [c["id"] for c in outcome["comments"]] == [1, 1000, 1001]


def test_a_new_preview_updates_in_place_and_prunes_parts_no_longer_wanted() -> None:
    comments = [
        {"id": 5, "body": _body("a.yaml", 1, 3, "old one"), "user": BOT},
        {"id": 6, "body": _body("a.yaml", 2, 3, "old two"), "user": BOT},
        {"id": 7, "body": _body("a.yaml", 3, 3, "old three"), "user": BOT},
        {"id": 8, "body": _body("b.yaml", 1, 1, "same"), "user": BOT},
        # Someone quoting the marker is never touched.
        {"id": 9, "body": _body("a.yaml", 2, 3, "quoted"), "user": {"login": "mallory"}},
    ]
    outcome = _sticky(comments, [_body("a.yaml", 1, 1, "new"), _body("b.yaml", 1, 1, "same")])
    assert outcome["summary"] == {"created": 0, "updated": 1, "unchanged": 1, "deleted": 2}
    assert outcome["calls"] == ["update 5", "delete 6", "delete 7"]
    assert {c["id"]: c["body"].split("\n")[-2] for c in outcome["comments"]} == {
        5: "new",
        8: "same",
        9: "quoted",
    }


def test_duplicates_from_an_interrupted_run_are_removed() -> None:
    comments = [
        {"id": 5, "body": _body("a.yaml", 1, 1, "x"), "user": BOT},
        {"id": 6, "body": _body("a.yaml", 1, 1, "x"), "user": BOT},
    ]
    outcome = _sticky(comments, [_body("a.yaml", 1, 1, "x")])
    assert outcome["calls"] == ["delete 6"]
    assert [c["id"] for c in outcome["comments"]] == [5]


def test_a_body_without_its_marker_is_refused() -> None:
    result = subprocess.run(
        ["node", "-e", _HARNESS, "--", str(STICKY)],
        input=json.dumps({"comments": [], "bodies": ["no marker here"]}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert "lacks the preview marker" in result.stderr


def test_what_a_pull_request_sends_is_capped_in_count_and_size() -> None:
    # The bodies come from the pull request's own run: anyone can make them many or huge.
    bodies = [_body(f"s{i:02}.yaml", 1, 1, "x" * (100_000 if i == 0 else 10)) for i in range(25)]
    outcome = _sticky([], bodies)
    posted = [c["body"] for c in outcome["comments"]]
    assert len(posted) == 20
    assert all(len(body) <= 65_000 for body in posted)
    assert posted[0].startswith(bodies[0][:60]) and "(cut: the preview is longer" in posted[0]
    assert posted[18] == bodies[18]
    assert posted[19].startswith("<!-- fleet-engine-preview: more part 1/1 -->")
    assert "6 more preview part(s) are not posted" in posted[19]


def test_pull_requests_from_forks_get_no_secrets_and_preview_against_the_base() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "preview.yml").read_text())
    (step,) = [
        s for s in workflow["jobs"]["preview"]["steps"] if "preview-specs.sh" in s.get("run", "")
    ]
    same_repository = "github.event.pull_request.head.repo.full_name == github.repository && "
    secrets = {name: value for name, value in step["env"].items() if "secrets." in value}
    assert set(secrets) == {"HCLOUD_TOKEN", "DIGITALOCEAN_TOKEN", "ENGINE_STATE_URL"}
    for name, value in secrets.items():
        assert value == f"${{{{ {same_repository}secrets.{name} || '' }}}}", name
    assert step["env"]["MODE"] == f"${{{{ {same_repository}'live' || 'ref' }}}}"


@pytest.mark.parametrize("name", ["preview.yml", "preview-comment.yml"])
def test_the_workflows_are_valid_yaml_with_least_privilege(name: str) -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    permissions = workflow["permissions"]
    assert "write" not in json.dumps({k: v for k, v in permissions.items() if k != "pull-requests"})
    if name == "preview.yml":
        assert permissions == {"contents": "read"}
        steps = json.dumps(workflow["jobs"]["preview"]["steps"])
        assert "preview-specs.sh" in steps and "upload-artifact" in steps
    else:
        # Without contents: read the checkout fails in a private repository.
        assert permissions == {"actions": "read", "contents": "read", "pull-requests": "write"}
        assert workflow[True]["workflow_run"]["workflows"] == ["preview"]
        assert "sticky-comment.js" in json.dumps(workflow["jobs"]["comment"]["steps"])
