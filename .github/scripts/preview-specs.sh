#!/usr/bin/env bash
# Preview every fleet spec a pull request changes and write the comment bodies to $OUT, one
# file per comment (comment-001.md, ...), each starting with its marker line.
#
#   BASE   the commit to compare with: the pull request's base (required)
#   MODE   live: read each provider (needs its token, and ENGINE_STATE_URL for a team store);
#          ref:  compare with the spec at BASE, no credentials (pull requests from forks)
#   SPECS  which files are fleet specs, as a git pathspec (default: specs/*.yaml)
#   OUT    where to write the comment bodies (default: preview)
#
# Exits 1 when a plan is blocked (over a limit, a disk that cannot shrink, ...) or a preview
# failed, after writing every body: the failure is shown in the comment too.
set -uo pipefail
: "${BASE:?set BASE to the commit to compare with}"
mode="${MODE:-ref}"
out="${OUT:-preview}"
mkdir -p "$out"
status=0
count=0
mapfile -t specs < <(git diff --name-only --diff-filter=d "$BASE"...HEAD -- "${SPECS:-specs/*.yaml}")
for spec in "${specs[@]}"; do
  against=(--against-ref "$BASE")
  [ "$mode" = live ] && against=()
  engine preview "$spec" --format markdown --detailed-exitcode "${against[@]}" \
    >"$out/plan.md" 2>"$out/error.txt"
  code=$?
  if [ "$code" -ne 0 ] && [ "$code" -ne 2 ]; then
    status=1
    if [ ! -s "$out/plan.md" ]; then
      {
        echo "<!-- fleet-engine-preview: $spec part 1/1 -->"
        echo
        echo "### Fleet preview: \`$spec\` — ❌ the preview failed"
        echo
        echo '```'
        cat "$out/error.txt"
        echo '```'
      } >"$out/plan.md"
    fi
  fi
  awk -v dir="$out" -v first="$count" '
    /^<!-- fleet-engine-preview: / { file = sprintf("%s/comment-%03d.md", dir, first + ++part) }
    { print > file }
  ' "$out/plan.md"
  count=$((count + $(grep -c '^<!-- fleet-engine-preview: ' "$out/plan.md")))
done
rm -f "$out/plan.md" "$out/error.txt"
echo "wrote $count comment bodies for ${#specs[@]} changed spec(s) to $out/"
exit "$status"
