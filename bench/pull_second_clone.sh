#!/usr/bin/env bash
# `dvc pull` time on a second clone: clone this repo twice beside each other in $1 (default
# /tmp/pull-bench), run the pipeline in the first and push to the default remote
# (../digits-dvc-storage, i.e. $1/digits-dvc-storage), then time `dvc pull` in the second.
#   MNIST_MIRROR=../shared/data/mnist bench/pull_second_clone.sh /tmp/pull-bench
set -euo pipefail
repo=$(git rev-parse --show-toplevel)
top=${1:-/tmp/pull-bench}
export PATH="$repo/.venv/bin:$PATH" DVC_NO_ANALYTICS=1
mkdir -p "$top" && cd "$top"
git clone -q "$repo" alice && cd alice
sed -i 's/^  epochs: .*/  epochs: 2/' params.yaml   # the pulled sizes do not depend on it
dvc repro >/dev/null
git -c user.name=bench -c user.email=bench@example.invalid commit -qam "pipeline run"
git add dvc.lock && git -c user.name=bench -c user.email=bench@example.invalid commit -qm lock || true
/usr/bin/time -f "dvc push: %e s" dvc push >/dev/null
cd .. && git clone -q alice bob && cd bob
/usr/bin/time -f "dvc pull: %e s" dvc pull >/dev/null
du -sh data/raw data/processed models/model.keras
dvc status
/usr/bin/time -f "dvc repro: %e s" dvc repro | grep -c "Running stage" || echo "stages run: 0"
