// Keeps the fleet engine's preview comments on a pull request up to date: one comment per
// part of each spec's preview, found again by the marker on its first line
//   <!-- fleet-engine-preview: SPEC part I/N -->
// Parts are updated in place (only when their text changed), missing parts are created, and
// parts that are no longer wanted (a plan that shrank, a spec no longer changed) are deleted.
// Only comments written by `author` (the workflow token's bot) are ever touched.
//
// Used by .github/workflows/preview-comment.yml through actions/github-script, which passes
// an authenticated Octokit as `github`. The bodies come from the pull request's own run, so
// they are data that anyone opening a pull request controls: at most MAX_COMMENTS of them are
// posted (the rest are named in one last comment) and each is cut to MAX_BODY characters
// (GitHub refuses more than 65,536).

const MARKER = /^<!-- fleet-engine-preview: (.+) part (\d+)\/(\d+) -->/;
const MAX_COMMENTS = 20;
const MAX_BODY = 65000;
const CUT = "\n\n_(cut: the preview is longer than a comment may be; the workflow run's artifact holds all of it)_\n";
const MORE_KEY = "<!-- fleet-engine-preview: more part 1/1 -->";

function capped(bodies) {
  const kept = bodies.length > MAX_COMMENTS ? bodies.slice(0, MAX_COMMENTS - 1) : bodies.slice();
  const out = kept.map((body) =>
    body.length > MAX_BODY ? body.slice(0, MAX_BODY - CUT.length) + CUT : body,
  );
  if (bodies.length > MAX_COMMENTS) {
    const left = bodies.length - kept.length;
    out.push(
      `${MORE_KEY}\n\n${left} more preview part(s) are not posted here (at most ` +
        `${MAX_COMMENTS} comments); the workflow run's artifact holds them.\n`,
    );
  }
  return out;
}

function keyOf(body) {
  const match = MARKER.exec(body || "");
  return match ? `${match[1]}#${match[2]}` : null;
}

async function upsertComments({ github, owner, repo, issue_number, bodies, author = "github-actions[bot]" }) {
  const existing = await github.paginate(github.rest.issues.listComments, {
    owner,
    repo,
    issue_number,
    per_page: 100,
  });
  const ours = new Map();
  for (const comment of existing) {
    const key = keyOf(comment.body);
    if (key && comment.user && comment.user.login === author && !ours.has(key)) {
      ours.set(key, comment);
    } else if (key && comment.user && comment.user.login === author) {
      // A duplicate left by an interrupted run: remove it.
      await github.rest.issues.deleteComment({ owner, repo, comment_id: comment.id });
    }
  }
  const summary = { created: 0, updated: 0, unchanged: 0, deleted: 0 };
  const wanted = new Set();
  for (const body of bodies) {
    if (!keyOf(body)) throw new Error(`a comment body lacks the preview marker: ${String(body).slice(0, 80)}`);
  }
  for (const body of capped(bodies)) {
    const key = keyOf(body);
    wanted.add(key);
    const current = ours.get(key);
    if (!current) {
      await github.rest.issues.createComment({ owner, repo, issue_number, body });
      summary.created += 1;
    } else if (current.body !== body) {
      await github.rest.issues.updateComment({ owner, repo, comment_id: current.id, body });
      summary.updated += 1;
    } else {
      summary.unchanged += 1;
    }
  }
  for (const [key, comment] of ours) {
    if (!wanted.has(key)) {
      await github.rest.issues.deleteComment({ owner, repo, comment_id: comment.id });
      summary.deleted += 1;
    }
  }
  return summary;
}

module.exports = { upsertComments, keyOf, MAX_COMMENTS, MAX_BODY };
