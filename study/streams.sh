#!/usr/bin/env bash
# The second edition unattended: one stream per argument list, run from the repository root.
#   bash study/streams.sh wiki_toxic go_emotions:45,46          # one stream
#   bash study/streams.sh hate_speech18 go_emotions:42,43,44    # the other, beside it
# Each DATASET[:SEED,SEED,...] waits for its finished search, then runs its seeds (default 42-46; wiki_toxic also
# 47-51 for teacher odd even odd_ce even_ce, ANALYSIS_PLAN §5). Two streams may share a data set only with disjoint
# seeds: a stage's models depend only on models of its own seed. Re-running resumes (finished stages are skipped).
# WORK_DIR (weights, default ../study2), RESULTS_DIR (default docs/results), SEARCH_DIR (default docs/results/search).
# The streams publish stage folders only (--rebuild_reports false): on go_emotions rebuilding the report after every
# stage took longer than the stage. `python study/run_study.py --report_only true` rebuilds every report at the end.
set -u
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python=${PYTHON:-.venv/bin/python}
run() {
  nice -n 15 "$python" study/run_study.py --work_dir "${WORK_DIR:-../study2}" --results_dir "${RESULTS_DIR:-docs/results}" \
    --search_dir "${SEARCH_DIR:-docs/results/search}" --rebuild_reports false "$@"
}
for spec in "$@"; do
  ds=${spec%%:*}
  seeds="42 43 44 45 46"
  [ "$spec" != "$ds" ] && seeds=$(echo "${spec#*:}" | tr ',' ' ')
  until run --dataset "$ds" --dry_run true > /dev/null 2>&1; do sleep 60; done  # refused until its search is complete
  echo "$(date) $ds seeds $seeds: search complete, study starts"
  run --dataset "$ds" --seeds $seeds
  echo "$(date) $ds seeds $seeds rc=$?"
  if [ "$spec" = wiki_toxic ]; then
    run --dataset "$ds" --seeds 47 48 49 50 51 --methods teacher odd even odd_ce even_ce
    echo "$(date) $ds seeds 47-51 rc=$?"
  fi
done
