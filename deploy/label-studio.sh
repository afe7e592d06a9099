#!/usr/bin/env bash
# Install, start, stop or query the local Label Studio used by the demo and the tests.
#   deploy/label-studio.sh install
#   deploy/label-studio.sh start --data var/label-studio --images var/images --port 8080
#   deploy/label-studio.sh stop --data var/label-studio
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m integrations.label_studio.launcher "$@"
