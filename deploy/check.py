#!/usr/bin/env python3
"""Offline checks of deploy/ (run by .ci/run):

1. the generated base is current (deploy/k8s/generate.py --check);
2. every overlay, rendered with `kubectl kustomize`, validates against the Kubernetes schemas with
   strict field checking (`kubernetes-validate --strict`, bundled schemas, no network), and with
   npm `kubernetes-models`, which also rejects bad enum values;
3. what schemas cannot see: each StatefulSet's serviceName names a headless Service; selectors
   match pod labels; ports named in probes exist; PDBs leave a quorum; every role gets
   KAFKA_BOOTSTRAP_SERVERS and the admin token from a Secret; grace periods exceed the drain time;
   the Kafka KRaft settings; the Grafana dashboard and the alert rules only use metrics the nodes
   export, and the scrape config loads the rules.

`--self-test` breaks a rendered overlay in each way above and checks that each is caught.
"""
import copy
import json
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAYS = ["production", "local"]
KUBERNETES_VERSION = "1.32.0"
DRAIN_SECONDS = 30


def render(overlay):
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def schema_check(overlay):
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)], check=True, capture_output=True, text=True).stdout
    path = pathlib.Path(f"/tmp/causeway-{overlay}.yaml")
    path.write_text(out)
    r = subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", "-k", KUBERNETES_VERSION, str(path)],
        capture_output=True,
        text=True,
    )
    return [f"{overlay}: {line}" for line in (r.stdout + r.stderr).splitlines() if line.strip()] or (
        [f"{overlay}: kubernetes-validate failed"] if r.returncode else []
    )


MODELS = DEPLOY / "models-check"


def models_check(paths):
    """kubernetes-models validation (enum values the JSON schemas let through)."""
    r = subprocess.run(["node", str(MODELS / "validate.mjs"), *map(str, paths)], capture_output=True, text=True, cwd=MODELS)
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    return lines or (["kubernetes-models validation failed"] if r.returncode else [])


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def exported_metrics():
    names = set()
    for path in ROOT.glob("*/src/**/*.rs"):
        names.update(re.findall(r'metrics::(?:counter|gauge|histogram)!\(\s*"([a-z_]+)"', path.read_text()))
    return names


def semantic(docs, name):
    problems = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    workloads = by_kind.get("StatefulSet", [])
    secrets = {s["metadata"]["name"] for s in by_kind.get("Secret", [])}
    kafka = [w for w in workloads if w["metadata"]["name"] == "kafka"]
    roles = [w for w in workloads if w["metadata"]["name"] != "kafka"]
    if len(roles) != 6:
        problems.append(f"{name}: expected 6 role StatefulSets, found {len(roles)}")
    for w in workloads:
        wn = w["metadata"]["name"]
        spec = w["spec"]
        pod = spec["template"]
        labels = pod["metadata"].get("labels", {})
        svc = services.get(spec.get("serviceName"))
        if svc is None or svc["spec"].get("clusterIP") != "None":
            problems.append(f"{name}: {wn}: serviceName {spec.get('serviceName')!r} is not a headless Service")
        elif not matches(svc["spec"].get("selector"), labels):
            problems.append(f"{name}: {wn}: its headless Service does not select its pods")
        if not matches(spec["selector"].get("matchLabels"), labels):
            problems.append(f"{name}: {wn}: selector does not match the pod labels")
        if not spec.get("volumeClaimTemplates"):
            problems.append(f"{name}: {wn}: no PersistentVolumeClaim template")
        if pod["spec"].get("terminationGracePeriodSeconds", 30) <= DRAIN_SECONDS:
            problems.append(f"{name}: {wn}: terminationGracePeriodSeconds must exceed the {DRAIN_SECONDS} s drain")
        if "podAntiAffinity" not in pod["spec"].get("affinity", {}):
            problems.append(f"{name}: {wn}: no pod anti-affinity")
        for c in pod["spec"]["containers"]:
            ports = {p.get("name") for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                p = c.get(probe)
                if p is None:
                    if w in roles:
                        problems.append(f"{name}: {wn}: no {probe}")
                    continue
                port = (p.get("httpGet") or p.get("tcpSocket") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problems.append(f"{name}: {wn}: {probe} names port {port!r}, which the container does not have")
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits"):
                problems.append(f"{name}: {wn}: resource requests and limits are required")
            if w in roles:
                env = {e["name"]: e for e in c.get("env", [])}
                if "KAFKA_BOOTSTRAP_SERVERS" not in env:
                    problems.append(f"{name}: {wn}: no KAFKA_BOOTSTRAP_SERVERS")
                if [p.get("path") for p in (c.get("readinessProbe", {}).get("httpGet", {}),)] != ["/readyz"]:
                    problems.append(f"{name}: {wn}: readiness must probe /readyz")
                if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
                    problems.append(f"{name}: {wn}: liveness must probe /healthz")
                ref = env.get("CAUSEWAY_ADMIN_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
                if not ref:
                    problems.append(f"{name}: {wn}: the admin token must come from a Secret")
                elif secrets and ref["name"] not in secrets:
                    problems.append(f"{name}: {wn}: Secret {ref['name']} is not in the manifests")
                ref = env.get("CAUSEWAY_READ_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
                if not ref:
                    problems.append(f"{name}: {wn}: the read token must come from a Secret")
                elif secrets and ref["name"] not in secrets:
                    problems.append(f"{name}: {wn}: Secret {ref['name']} is not in the manifests")
                if not c.get("envFrom"):
                    problems.append(f"{name}: {wn}: configuration must come from the ConfigMap")
                # A sharded role's pods split its partitions by ordinal: the shard count must be
                # the pod count (or keys land on pods that do not exist, or on two pods).
                role_name = env.get("CAUSEWAY_ROLE", {}).get("value")
                count = env.get("CAUSEWAY_SHARD_COUNT", {}).get("value")
                replicas = w["spec"].get("replicas", 1)
                if role_name != "query" and count != str(replicas):
                    problems.append(f"{name}: {wn}: CAUSEWAY_SHARD_COUNT {count!r} is not its {replicas} replicas")
                if role_name != "query" and replicas > 1 and env.get("CAUSEWAY_SHARD_INDEX", {}).get("value") != "auto":
                    problems.append(f"{name}: {wn}: CAUSEWAY_SHARD_INDEX must be auto (the pod ordinal)")
    # Services select pods that exist.
    pod_labels = [w["spec"]["template"]["metadata"].get("labels", {}) for w in workloads]
    for s in services.values():
        if not any(matches(s["spec"].get("selector"), l) for l in pod_labels):
            problems.append(f"{name}: Service {s['metadata']['name']} selects no pods")
    # PDBs: each selects a workload and leaves a quorum (a majority of a Kafka quorum; one pod of
    # a role at most down).
    for pdb in by_kind.get("PodDisruptionBudget", []):
        sel = pdb["spec"]["selector"].get("matchLabels")
        target = [w for w in workloads if matches(sel, w["spec"]["template"]["metadata"].get("labels", {}))]
        if not target:
            problems.append(f"{name}: PDB {pdb['metadata']['name']} selects no workload")
            continue
        replicas = target[0]["spec"].get("replicas", 1)
        max_unavailable = pdb["spec"].get("maxUnavailable")
        if max_unavailable is None:
            max_unavailable = replicas - pdb["spec"].get("minAvailable", 0)
        quorum = replicas // 2 + 1 if target[0] in kafka else max(replicas - 1, 0)
        if replicas - max_unavailable < quorum:
            problems.append(f"{name}: PDB {pdb['metadata']['name']} allows {max_unavailable} of {replicas} down")
    if not any(w in kafka for w in workloads):
        problems.append(f"{name}: no Kafka StatefulSet")
    for w in workloads:
        if w not in kafka and w not in roles:
            continue
        covered = any(
            matches(p["spec"]["selector"].get("matchLabels"), w["spec"]["template"]["metadata"].get("labels", {}))
            for p in by_kind.get("PodDisruptionBudget", [])
        )
        if not covered:
            problems.append(f"{name}: {w['metadata']['name']} has no PodDisruptionBudget")
    for k in kafka:
        spec = k["spec"]
        c = spec["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        command = " ".join(c.get("command", []))
        want = {
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_DEFAULT_REPLICATION_FACTOR": "3",
            "KAFKA_MIN_INSYNC_REPLICAS": "2",
            "KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE": "false",
        }
        for key, value in want.items():
            if env.get(key) != value:
                problems.append(f"{name}: kafka: {key} must be {value}, is {env.get(key)!r}")
        if spec.get("replicas") != 3:
            problems.append(f"{name}: kafka: 3 nodes are required")
        if spec.get("podManagementPolicy") != "Parallel":
            problems.append(f"{name}: kafka: podManagementPolicy must be Parallel")
        if "KAFKA_NODE_ID" not in command or "HOSTNAME##*-" not in command:
            problems.append(f"{name}: kafka: the node id must come from the pod ordinal")
        headless = services.get(spec.get("serviceName"), {})
        if headless.get("spec", {}).get("publishNotReadyAddresses") is not True:
            problems.append(f"{name}: kafka: its headless Service must publish not-ready addresses")
    # Every role's ConfigMap reference exists.
    maps = {m["metadata"]["name"] for m in by_kind.get("ConfigMap", [])}
    for w in roles:
        for c in w["spec"]["template"]["spec"]["containers"]:
            for ref in c.get("envFrom", []):
                if ref.get("configMapRef", {}).get("name") not in maps:
                    problems.append(f"{name}: {w['metadata']['name']}: ConfigMap {ref} is not in the manifests")
    if not by_kind.get("NetworkPolicy"):
        problems.append(f"{name}: no NetworkPolicy")
    return problems


def dashboard_check():
    problems = []
    dash = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())
    exported = exported_metrics()
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            for m in re.findall(r"causeway_[a-z_]+", t["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", m)
                if base not in exported:
                    problems.append(f"dashboard panel {panel['title']!r} uses {m}, which no node exports")
    # The alert rules query exported metrics too, and the scrape config loads them.
    rules = yaml.safe_load((DEPLOY / "monitoring" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for m in re.findall(r"causeway_[a-z_]+", rule["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", m)
                if base not in exported:
                    problems.append(f"alert {rule['alert']!r} uses {m}, which no node exports")
    scrape = yaml.safe_load((DEPLOY / "monitoring" / "prometheus.yml").read_text())
    if "alerts.yml" not in scrape.get("rule_files", []):
        problems.append("monitoring/prometheus.yml does not load alerts.yml")
    return problems


def dockerfile_check():
    problems = []
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+", text, re.M)
    if len(stages) < 2:
        problems.append("Dockerfile: a multi-stage build is required")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or users[-1].split(":")[0] in ("0", "root"):
        problems.append("Dockerfile: the final stage must run as a non-root user")
    return problems


def self_test():
    docs = render("production")
    assert semantic(docs, "production") == [], semantic(docs, "production")

    def sts(d, name):
        return next(x for x in d if x["kind"] == "StatefulSet" and x["metadata"]["name"] == name)

    breakages = {
        "serviceName": lambda d: sts(d, "causeway-order")["spec"].update(serviceName="causeway-order"),
        "selector": lambda d: sts(d, "causeway-saga")["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/component": "other"}
        ),
        "probe port": lambda d: sts(d, "causeway-query")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"][
            "httpGet"
        ].update(port="web"),
        "quorum": lambda d: next(
            x for x in d if x["kind"] == "PodDisruptionBudget" and x["metadata"]["name"] == "kafka"
        )["spec"].update(maxUnavailable=2),
        "bootstrap": lambda d: sts(d, "causeway-payment")["spec"]["template"]["spec"]["containers"][0].update(
            env=[e for e in sts(d, "causeway-payment")["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] != "KAFKA_BOOTSTRAP_SERVERS"]
        ),
        "min.insync": lambda d: next(
            e for e in sts(d, "kafka")["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "KAFKA_MIN_INSYNC_REPLICAS"
        ).update(value="1"),
        "grace": lambda d: sts(d, "causeway-shipping")["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=10),
        "shard count": lambda d: sts(d, "causeway-inventory")["spec"].update(replicas=3),
        "publishNotReady": lambda d: next(
            x for x in d if x["kind"] == "Service" and x["metadata"]["name"] == "kafka-headless"
        )["spec"].pop("publishNotReadyAddresses"),
    }
    for what, breakit in breakages.items():
        broken = copy.deepcopy(docs)
        breakit(broken)
        assert semantic(broken, "broken"), f"the checks missed a broken {what}"
    # An enum value the schemas accept but Kubernetes rejects.
    broken = copy.deepcopy(docs)
    sts(broken, "causeway-order")["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Sometimes"
    path = pathlib.Path("/tmp/causeway-selftest-enum.yaml")
    path.write_text(yaml.safe_dump_all(broken))
    assert models_check([path]), "kubernetes-models missed a bad imagePullPolicy"
    print(f"self-test: {len(breakages) + 1} kinds of breakage caught")


def main():
    if "--self-test" in sys.argv:
        self_test()
        return
    problems = []
    r = subprocess.run([sys.executable, str(DEPLOY / "k8s" / "generate.py"), "--check"], capture_output=True, text=True)
    if r.returncode:
        problems.append(r.stdout.strip() or r.stderr.strip())
    for overlay in OVERLAYS:
        problems += schema_check(overlay)
        problems += semantic(render(overlay), overlay)
    problems += models_check([pathlib.Path(f"/tmp/causeway-{o}.yaml") for o in OVERLAYS])
    problems += dashboard_check()
    problems += dockerfile_check()
    for p in problems:
        print("problem:", p)
    if problems:
        sys.exit(1)
    print(
        f"deploy: {len(OVERLAYS)} overlays valid against Kubernetes {KUBERNETES_VERSION} (strict) and "
        "kubernetes-models, checks passed"
    )


if __name__ == "__main__":
    main()
