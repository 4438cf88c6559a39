#!/usr/bin/env python3
"""Helpers of scripts/deploy-checks.sh (needs PyYAML, which yamllint installs).

    deploy_checks.py split OUTDIR FILE...    one file per YAML document, named KIND-N.yaml;
                                             prints "KIND APIVERSION PATH" per document
    deploy_checks.py dashboards FILE...      Grafana dashboard JSON: structure of every panel
    deploy_checks.py prometheusrule          deploy/prometheus/*.yml rules as a PrometheusRule
"""
import json
import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = os.path.join(ROOT, "deploy", "prometheus")


def rule_files():
    """deploy/prometheus/*.yml that hold rule groups (not the promtool tests or the scrape config)."""
    def has_groups(path):
        with open(path) as f:
            return any(line.startswith("groups:") for line in f)
    return sorted(
        path for path in (os.path.join(RULES, f) for f in os.listdir(RULES))
        if path.endswith(".yml") and not path.endswith("_test.yml") and has_groups(path)
    )

# Panel types that show no query.
NO_QUERY_PANELS = {"row", "text", "news", "dashlist", "annolist"}


def split(outdir, files):
    os.makedirs(outdir, exist_ok=True)
    n = 0
    for path in files:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc:
                    continue
                n += 1
                kind = doc.get("kind", "Unknown")
                out = os.path.join(outdir, f"{kind}-{n}.yaml")
                with open(out, "w") as o:
                    yaml.safe_dump(doc, o)
                print(kind, doc.get("apiVersion", ""), out)


def panels_of(container):
    for panel in container.get("panels", []) or []:
        yield panel
        # A collapsed row holds its panels.
        yield from panels_of(panel)


def check_dashboard(path):
    """The problems of one dashboard file, as messages."""
    try:
        with open(path) as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        return [f"not valid JSON: {e}"]
    if not isinstance(dash, dict):
        return ["top level is not an object"]
    problems = []
    for key in ("uid", "title", "panels"):
        if not dash.get(key):
            problems.append(f"no {key}")
    panels = list(panels_of(dash))
    if not any(p.get("type") not in NO_QUERY_PANELS for p in panels):
        problems.append("no panel with a query")
    for panel in panels:
        kind = panel.get("type")
        name = f"panel {panel.get('id', '?')} {panel.get('title', '')!r}"
        if not kind:
            problems.append(f"{name}: no type")
        if kind in NO_QUERY_PANELS:
            continue
        if not panel.get("datasource"):
            problems.append(f"{name}: no datasource")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{name}: no targets")
        for t in targets:
            if not isinstance(t, dict) or not str(t.get("expr", "")).strip():
                problems.append(f"{name}: target {t.get('refId', '?') if isinstance(t, dict) else t!r} has no expr")
    return problems


def dashboards(files):
    failed = False
    for path in files:
        problems = check_dashboard(path)
        for p in problems:
            print(f"{path}: {p}")
        if problems:
            failed = True
        else:
            print(f"{path}: {sum(1 for _ in panels_of(json.load(open(path))))} panels OK")
    return 1 if failed else 0


def prometheusrule():
    """The groups of every rule file, verbatim (comments and all), under a PrometheusRule."""
    body = ["  groups:"]
    for path in rule_files():
        with open(path) as f:
            lines = f.read().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
        body.append(f"    # {os.path.relpath(path, ROOT)}")
        body.extend(("  " + line) if line.strip() else "" for line in lines[start + 1:])
    names = ", ".join(os.path.basename(p) for p in rule_files())
    print(
        f"# Generated from deploy/prometheus/ ({names}) by `scripts/deploy_checks.py prometheusrule`;\n"
        "# scripts/deploy-checks.sh fails when they differ. Edit the rule files, then regenerate:\n"
        "#   python3 scripts/deploy_checks.py prometheusrule > deploy/kubernetes/prometheusrule.yaml\n"
        "# For the Prometheus Operator: its ruleSelector must match these labels.\n"
        "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        "  name: infermq\n"
        "  labels:\n"
        "    app.kubernetes.io/name: infermq\n"
        "spec:\n" + "\n".join(body)
    )


def main(argv):
    if len(argv) >= 3 and argv[1] == "split":
        split(argv[2], argv[3:])
        return 0
    if len(argv) >= 2 and argv[1] == "dashboards":
        return dashboards(argv[2:])
    if argv[1:] == ["prometheusrule"]:
        prometheusrule()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
