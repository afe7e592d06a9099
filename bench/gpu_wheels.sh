#!/usr/bin/env bash
# Wheels a lent GPU machine lacks for bench/score_bench.py, into .whl/ (git-ignored).
#
# The device machines have their own Python 3.12 with torch, torchvision, numpy, pillow, httpx,
# urllib3 and rich, and no package index; what the benchmark imports beyond those travels as
# wheels, at the versions this checkout's .venv runs. On the lent machine (device `run`, with
# `carry: [".whl"]`):
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   PYTHONPATH=/tmp/site python3 bench/score_bench.py --model resnet50 --size 224 \
#       --n 8192 --batch 256 --device cuda --write docs/benchmarks.md
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
packages=(annotated-types lmdb pycurl pydantic pydantic-core pydantic-settings python-dotenv simplejpeg
  typing-extensions typing-inspection)
pins=()
for name in "${packages[@]}"; do
  pins+=("$name==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
rm -rf .whl && mkdir .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
ls .whl
