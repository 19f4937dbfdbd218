# The report of `cargo xtask ci --json` as a Markdown table, for a GitHub job summary:
#   jq --raw-output --from-file .github/ci-summary.jq ci.json >> "$GITHUB_STEP_SUMMARY"
# The report's schema is in docs/OPERATIONS.md ("Output for programs").

# Seconds to one decimal, or "-" for a step that did not run.
def took: if . == null then "-" else "\((. * 10 | round) / 10)s" end;

# Text safe inside a table cell: one line, no column breaks.
def cell: gsub("[\r\n]+"; " ") | gsub("\\|"; "\\|");

def note:
  if .cached_from != null then
    "inputs unchanged since the pass at \(.cached_from.at) (\(.cached_from.revision), \(.cached_from.seconds | took))"
  else .note end;

"### cargo xtask ci",
"",
"| step | result | time | note |",
"|---|---|---|---|",
(.steps[] | "| \(.step) | \(.result) | \(.seconds | took) | \(note | cell) |"),
"",
"Total: \(.total_seconds | took)"
