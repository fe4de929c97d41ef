#!/usr/bin/env bash
# Commit the study's finished stages as they land, so a session that ends mid-run loses none of them.
#   bash study/commit_loop.sh [MINUTES]      # from the checkout that RESULTS_DIR points into; default every 15 min
# It commits only docs/results/<data set>/ of the second edition, docs/results/search/ and docs/results/README.md
# (small outputs; run_study.py never writes weights there). A stage folder appears by rename when complete, so a
# commit never holds half a stage.
set -u
cd "$(dirname "$0")/.."
paths=(docs/results/README.md docs/results/search docs/results/wiki_toxic docs/results/hate_speech18
  docs/results/go_emotions)
while true; do
  existing=()
  for p in "${paths[@]}"; do [ -e "$p" ] && existing+=("$p"); done
  git add -- "${existing[@]}"
  if ! git diff --cached --quiet -- "${existing[@]}"; then
    new=$(git diff --cached --name-only -- "${existing[@]}" | grep -c '/stages/.*/results.csv$')
    git commit -q -m "study, second edition: stages as they landed ($new new stage(s); $(date -u +%H:%M) UTC)" \
      -- "${existing[@]}" && echo "$(date) committed $new new stage(s)"
  fi
  sleep $((${1:-15} * 60))
done
