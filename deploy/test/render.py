"""Renders and strictly lints the Helm chart offline (PyPI helm-python-sdk
embeds Helm; there is no helm binary), once per values file.

    render.py CHART OUTDIR [VALUES.yaml ...]   ("-" means the chart's defaults;
                                              "A.yaml,B.yaml" layers B on A, like helm -f A -f B)

For each values file NAME it writes OUTDIR/NAME.yaml (every rendered object,
NOTES.txt and custom resources aside), OUTDIR/NAME.crs.yaml (the custom
resources: ScaledObjects, ServiceMonitors), OUTDIR/NAME.kiln.yaml (the ConfigMap's kiln config) and
prints one JSON line summarising what the tests assert on. Lint findings of
warning severity or worse fail the run.
"""

import json
import os
import sys

import helm_python as helm
import yaml


def container_facts(pod_spec):
    facts = []
    for c in pod_spec.get("containers", []):
        sc = {**pod_spec.get("securityContext", {}), **c.get("securityContext", {})}
        facts.append({
            "name": c["name"],
            "args": c.get("args", []),
            "readiness": sorted(k for k in c.get("readinessProbe", {}) if k in ("grpc", "httpGet", "exec", "tcpSocket")),
            "liveness": sorted(k for k in c.get("livenessProbe", {}) if k in ("grpc", "httpGet", "exec", "tcpSocket")),
            "startup": sorted(k for k in c.get("startupProbe", {}) if k in ("grpc", "httpGet", "exec", "tcpSocket")),
            "requests": bool(c.get("resources", {}).get("requests")),
            "limits": bool(c.get("resources", {}).get("limits")),
            "run_as_non_root": sc.get("runAsNonRoot") is True,
            "read_only_root": sc.get("readOnlyRootFilesystem") is True,
            "seccomp": sc.get("seccompProfile", {}).get("type"),
            "proc_mount": c.get("securityContext", {}).get("procMount"),
            "host_users": pod_spec.get("hostUsers"),
        })
    return facts


def layered(files):
    """The values of comma-separated files, later ones over earlier ones."""
    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a
    out = {}
    for f in files.split(","):
        out = merge(out, yaml.safe_load(open(f)) or {})
    return out


# API groups of the Kubernetes schemas kubernetes-validate knows.
CORE_GROUPS = ("v1", "apps/", "autoscaling/", "policy/", "batch/", "networking.k8s.io/",
               "rbac.authorization.k8s.io/", "apiextensions.k8s.io/")


def main():
    chart_dir, out_dir, value_files = sys.argv[1], sys.argv[2], sys.argv[3:] or ["-"]
    chart = helm.Chart.load(chart_dir)
    for vf in value_files:
        name = "default" if vf == "-" else os.path.splitext(os.path.basename(vf.split(",")[-1]))[0]
        values = None if vf == "-" else helm.values_from_yaml(yaml.safe_dump(layered(vf)))
        report = helm.lint(chart_dir, values, strict=True, kube_version="v1.29.0")
        bad = [m for m in report.get("messages") or [] if m.get("severity", 0) >= 2]
        if report.get("errors") or bad:
            sys.exit(f"{name}: helm lint --strict failed: {report}")
        rendered = chart.render(values, name="kiln", namespace="build", is_install=True)
        docs = []
        for path, text in sorted(rendered.items()):
            if path.endswith("NOTES.txt"):
                continue
            docs.extend(d for d in yaml.safe_load_all(text) if d)
        core = [d for d in docs if d["apiVersion"].startswith(CORE_GROUPS)]
        custom = [d for d in docs if not d["apiVersion"].startswith(CORE_GROUPS)]
        with open(os.path.join(out_dir, f"{name}.yaml"), "w") as f:
            yaml.safe_dump_all(core, f)
        with open(os.path.join(out_dir, f"{name}.crs.yaml"), "w") as f:
            yaml.safe_dump_all(custom, f)
        notes = next((t for p, t in rendered.items() if p.endswith("NOTES.txt")), "")
        summary = {"values": name, "kinds": sorted(d["kind"] for d in docs), "deployments": {},
                   "notes": notes, "annotations": {}, "scaled_objects": {}}
        for d in docs:
            if d["kind"] == "ConfigMap" and "kiln.yaml" in d.get("data", {}):
                with open(os.path.join(out_dir, f"{name}.kiln.yaml"), "w") as f:
                    f.write(d["data"]["kiln.yaml"])
            if d["kind"] == "ServiceAccount":
                summary["annotations"] = d["metadata"].get("annotations") or {}
            if d["kind"] == "ScaledObject":
                summary["scaled_objects"][d["metadata"]["name"]] = {
                    "target": d["spec"]["scaleTargetRef"]["name"],
                    "min": d["spec"].get("minReplicaCount"),
                    "labels": d["metadata"]["annotations"]["kiln.build/platform-labels"],
                    "triggers": d["spec"]["triggers"],
                }
            if d["kind"] == "Deployment":
                summary["deployments"][d["metadata"]["name"]] = container_facts(d["spec"]["template"]["spec"])
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
