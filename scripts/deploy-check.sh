#!/usr/bin/env bash
# Offline checks of deploy/: renders every overlay with `kubectl kustomize`, validates it against
# the Kubernetes schemas with strict field checking (kubernetes-validate, bundled schemas), and
# runs the checks schemas cannot do (deploy/check.py), including its self-test.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v kubectl >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq kubectl \
    || { echo "kubectl (for kubectl kustomize) is required" >&2; exit 1; }
fi
python3 -c "import yaml" 2>/dev/null || python3 -m pip install -q pyyaml
command -v kubernetes-validate >/dev/null 2>&1 || python3 -m pip install -q "kubernetes-validate==1.37.0"
# kubernetes-models (npm), pinned by deploy/models-check/package-lock.json; installed once.
if [ ! -d deploy/models-check/node_modules/kubernetes-models ]; then
  command -v npm >/dev/null 2>&1 || { echo "npm (Node.js) is required for the manifest checks" >&2; exit 1; }
  (cd deploy/models-check && npm ci --no-audit --no-fund --silent)
fi
python3 deploy/check.py --self-test
python3 deploy/check.py
