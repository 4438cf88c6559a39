#!/usr/bin/env bash
# Checks the hardening of the deploy files (docs/SECURITY.md):
# - every Kubernetes manifest passes `kubernetes-validate --strict`;
# - every pod template meets the "restricted" Pod Security Standard, reads no secret through an
#   environment variable, and the ConfigMap holds no broker URL; a PodDisruptionBudget and a
#   NetworkPolicy select the workers; a gateway container has API keys (gateway.api_keys_file)
#   from a Secret;
# - the systemd unit passes `systemd-analyze verify` and `systemd-analyze security` scores it
#   2.0 or better.
# Exit status 2: a checker is not installed (scripts/ensure-test-tools.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v kubernetes-validate >/dev/null || missing+=(kubernetes-validate)
command -v systemd-analyze >/dev/null || missing+=(systemd-analyze)
python3 -c "import yaml" 2>/dev/null || missing+=(python3-yaml)
if [ ${#missing[@]} -gt 0 ]; then
  echo "check-deploy-security: not installed: ${missing[*]}" >&2
  exit 2
fi

kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml

python3 - deploy/kubernetes/*.yaml <<'PY'
import sys, yaml
docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]
kinds = {d["kind"] for d in docs}
errors = []
for need in ("PodDisruptionBudget", "NetworkPolicy"):
    if need not in kinds:
        errors.append(f"no {need}")
for d in docs:
    name = f'{d["kind"]}/{d.get("metadata", {}).get("name", "")}'
    if d["kind"] == "ConfigMap" and any("amqp" in str(v) and "@" in str(v) for v in d.get("data", {}).values()):
        errors.append(f"{name}: a broker URL with credentials")
    if d["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        continue
    pod = d["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        errors.append(f"{name}: pod seccompProfile is not RuntimeDefault")
    writable = {v["name"] for v in pod.get("volumes", []) if "configMap" not in v and "secret" not in v}
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        where = f"{name} container {c['name']}"
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            errors.append(f"{where}: runAsNonRoot is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            errors.append(f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            errors.append(f"{where}: capabilities.drop is not [ALL]")
        if sc.get("capabilities", {}).get("add"):
            errors.append(f"{where}: adds capabilities")
        for e in c.get("env", []):
            if "secretKeyRef" in e.get("valueFrom", {}):
                errors.append(f"{where}: secret {e['name']} in an environment variable")
        if "gateway" in c.get("args", []):
            keys = next((e.get("value", "") for e in c.get("env", [])
                         if e["name"] == "INFERMQ__GATEWAY__API_KEYS_FILE"), "")
            secrets = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
            from_secret = any(keys.startswith(m["mountPath"].rstrip("/") + "/")
                              for m in c.get("volumeMounts", []) if m["name"] in secrets)
            if not from_secret:
                errors.append(f"{where}: a gateway without gateway.api_keys_file from a Secret")
        mounted = {m["name"]: m for m in c.get("volumeMounts", [])}
        for v, m in mounted.items():
            if v not in writable and not m.get("readOnly"):
                errors.append(f"{where}: {v} mounted writable")
for e in errors:
    print("check-deploy-security:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY

unit=deploy/systemd/infermq.service
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# verify needs the ExecStart binary; check the rest of the unit with a stand-in.
sed "s|/usr/local/bin/infermq|$(command -v true)|" "$unit" >"$tmp/infermq.service"
systemd-analyze verify "$tmp/infermq.service"
systemd-analyze security --offline=true --threshold=20 "$unit" | tail -1
echo "check-deploy-security: ok"
