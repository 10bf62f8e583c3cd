#!/usr/bin/env python3
"""Writes deploy/k8s/base/: one StatefulSet (with its PVC template, headless and client Services,
PodDisruptionBudget) per Causeway role, the Kafka KRaft cluster, configuration, network policy.

The six roles differ in a few values only, so they are generated from the table below rather than
kept as six hand-edited copies. Run it after changing the table; CI checks the files are current:

    python3 deploy/k8s/generate.py          # rewrite
    python3 deploy/k8s/generate.py --check  # exit 1 if a file is stale
"""
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
BASE = HERE / "base"
APP = "causeway"
HTTP_PORT = 8080
KAFKA_REPLICAS = 3
# Drain: finish in-flight work, save checkpoints, flush. Grace period must be above it.
DRAIN_SECONDS = 30
GRACE_SECONDS = 60

# role: (replicas, shardable, cpu request, memory request, memory limit, storage)
ROLES = {
    # Orders, payments, shipments and sagas are keyed by order id: pods split the partitions
    # (pod k of n takes the partitions p % n == k), so each owns the orders whose keys land there.
    "order": (2, True, "250m", "256Mi", "1Gi", "10Gi"),
    "payment": (2, True, "250m", "256Mi", "1Gi", "10Gi"),
    "shipping": (2, True, "250m", "256Mi", "1Gi", "10Gi"),
    "saga": (2, True, "500m", "512Mi", "2Gi", "20Gi"),
    # Stock is keyed by SKU (the saga sends one command per SKU): pods split the SKUs the same way.
    "inventory": (2, True, "250m", "256Mi", "1Gi", "10Gi"),
    # Every query pod folds every topic: they scale out freely behind the client Service.
    "query": (2, False, "500m", "512Mi", "2Gi", "20Gi"),
}


def labels(role):
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": role}


def role_docs(role):
    replicas, shardable, cpu, mem, mem_limit, storage = ROLES[role]
    name = f"{APP}-{role}"
    env = [
        {"name": "CAUSEWAY_ROLE", "value": role},
        {"name": "CAUSEWAY_NODE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "CAUSEWAY_SHARD_COUNT", "value": str(replicas if shardable else 1)},
        {"name": "CAUSEWAY_SHARD_INDEX", "value": "auto" if shardable else "0"},
        {
            "name": "KAFKA_BOOTSTRAP_SERVERS",
            "valueFrom": {"configMapKeyRef": {"name": "causeway-config", "key": "KAFKA_BOOTSTRAP_SERVERS"}},
        },
        {
            "name": "CAUSEWAY_ADMIN_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "causeway-admin", "key": "token"}},
        },
        # Reads of personal data (the log, the live feed, orders, sagas) and the console need it:
        # every pod listens on all interfaces.
        {
            "name": "CAUSEWAY_READ_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "causeway-read", "key": "token"}},
        },
    ]
    if role == "query":
        # Admission on the pods that take commands: a saga crosses Kafka five times, so its
        # latency target is wider than the embedded node's 1 s (ARCHITECTURE.md, "Overload").
        env.append({"name": "CAUSEWAY_ADMISSION_TARGET_MS", "value": "3000"})
    probe = lambda path, period, failures: {  # noqa: E731
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "labels": labels(role)},
        "spec": {
            "serviceName": f"{name}-headless",
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels(role)},
            "template": {
                "metadata": {
                    "labels": labels(role),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(HTTP_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "topologyKey": "kubernetes.io/hostname",
                                        "labelSelector": {"matchLabels": labels(role)},
                                    },
                                }
                            ]
                        }
                    },
                    "containers": [
                        {
                            "name": "causeway",
                            "image": "causeway:latest",
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["serve", "--listen", f"0.0.0.0:{HTTP_PORT}", "--data-dir", "/data"],
                            "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
                            "envFrom": [{"configMapRef": {"name": "causeway-config"}}],
                            "env": env,
                            "startupProbe": probe("/healthz", 2, 60),
                            "livenessProbe": probe("/healthz", 10, 3),
                            "readinessProbe": probe("/readyz", 5, 2),
                            "resources": {
                                "requests": {"cpu": cpu, "memory": mem},
                                "limits": {"memory": mem_limit},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data", "labels": labels(role)},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": storage}},
                    },
                }
            ],
        },
    }
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{name}-headless", "labels": labels(role)},
        "spec": {
            "clusterIP": "None",
            "selector": labels(role),
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http"}],
        },
    }
    client = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels(role)},
        "spec": {
            "type": "ClusterIP",
            "selector": labels(role),
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "labels": labels(role)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(role)}},
    }
    return [sts, headless, client, pdb]


def kafka_docs():
    lab = {"app.kubernetes.io/name": "kafka", "app.kubernetes.io/part-of": APP}
    voters = ",".join(f"{i}@kafka-{i}.kafka-headless:9093" for i in range(KAFKA_REPLICAS))
    # The node id is the pod's ordinal; the advertised address its stable DNS name.
    start = (
        'export KAFKA_NODE_ID="${HOSTNAME##*-}"; '
        'export KAFKA_ADVERTISED_LISTENERS="PLAINTEXT://${HOSTNAME}.kafka-headless:9092"; '
        "exec /etc/kafka/docker/run"
    )
    settings = {
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": voters,
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "CLUSTER_ID": "Y2F1c2V3YXkta3JhZnQtMQ",
        "KAFKA_LOG_DIRS": "/var/lib/kafka/data/logs",
        "KAFKA_DEFAULT_REPLICATION_FACTOR": str(KAFKA_REPLICAS),
        "KAFKA_MIN_INSYNC_REPLICAS": "2",
        "KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE": "false",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": str(KAFKA_REPLICAS),
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": str(KAFKA_REPLICAS),
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "2",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_NUM_PARTITIONS": "12",
    }
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "kafka", "labels": lab},
        "spec": {
            "serviceName": "kafka-headless",
            "replicas": KAFKA_REPLICAS,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": lab},
            "template": {
                "metadata": {"labels": lab},
                "spec": {
                    "terminationGracePeriodSeconds": 120,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
                    "affinity": {
                        "podAntiAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": [
                                {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": lab}}
                            ]
                        }
                    },
                    "containers": [
                        {
                            "name": "kafka",
                            "image": "apache/kafka:3.9.1",
                            "command": ["bash", "-c", start],
                            "ports": [
                                {"name": "kafka", "containerPort": 9092},
                                {"name": "controller", "containerPort": 9093},
                            ],
                            "env": [{"name": k, "value": v} for k, v in settings.items()],
                            "readinessProbe": {"tcpSocket": {"port": "kafka"}, "periodSeconds": 10},
                            "livenessProbe": {
                                "tcpSocket": {"port": "controller"},
                                "periodSeconds": 20,
                                "failureThreshold": 6,
                            },
                            "resources": {
                                "requests": {"cpu": "500m", "memory": "2Gi"},
                                "limits": {"memory": "4Gi"},
                            },
                            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/kafka/data"}],
                        }
                    ],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data", "labels": lab},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "50Gi"}}},
                }
            ],
        },
    }
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kafka-headless", "labels": lab},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": lab,
            "ports": [{"name": "kafka", "port": 9092}, {"name": "controller", "port": 9093}],
        },
    }
    client = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kafka", "labels": lab},
        "spec": {"selector": lab, "ports": [{"name": "kafka", "port": 9092, "targetPort": "kafka"}]},
    }
    # A KRaft quorum of 3 survives one voter down: never voluntarily evict a second.
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "kafka", "labels": lab},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": lab}},
    }
    return [sts, headless, client, pdb]


def config_docs():
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "causeway-config", "labels": {"app.kubernetes.io/name": APP}},
        "data": {
            "KAFKA_BOOTSTRAP_SERVERS": "kafka-0.kafka-headless:9092,kafka-1.kafka-headless:9092,kafka-2.kafka-headless:9092",
            "CAUSEWAY_DURABILITY": "fsync",
            "CAUSEWAY_CACHE_MIB": "256",
            "CAUSEWAY_KAFKA_PARTITIONS": "12",
            "CAUSEWAY_KAFKA_REPLICATION": str(KAFKA_REPLICAS),
            "CAUSEWAY_KAFKA_COMPRESSION": "lz4",
            "RUST_LOG": "info",
        },
    }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "causeway", "labels": {"app.kubernetes.io/name": APP}},
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": APP}},
            "policyTypes": ["Ingress", "Egress"],
            # HTTP from anywhere in the namespace (ingress controller, Prometheus, other pods).
            "ingress": [{"ports": [{"port": HTTP_PORT, "protocol": "TCP"}]}],
            "egress": [
                {
                    "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "kafka"}}}],
                    "ports": [{"port": 9092, "protocol": "TCP"}],
                },
                {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            ],
        },
    }
    kafka_policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "kafka", "labels": {"app.kubernetes.io/name": "kafka"}},
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kafka"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": APP}}},
                        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "kafka"}}},
                    ],
                    "ports": [{"port": 9092, "protocol": "TCP"}, {"port": 9093, "protocol": "TCP"}],
                }
            ],
        },
    }
    return [cm, policy, kafka_policy]


def render():
    files = {"config.yaml": config_docs(), "kafka.yaml": kafka_docs()}
    for role in ROLES:
        files[f"{role}.yaml"] = role_docs(role)
    out = {}
    header = "# Generated by deploy/k8s/generate.py; edit that, not this.\n"
    for name, docs in files.items():
        out[name] = header + yaml.safe_dump_all(docs, sort_keys=False, width=120)
    resources = "\n".join(f"  - {n}" for n in files)
    out["kustomization.yaml"] = (
        header
        + "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        + "labels:\n  - pairs:\n      app.kubernetes.io/part-of: causeway\n"
        + f"resources:\n{resources}\n"
    )
    return out


def main():
    check = "--check" in sys.argv
    BASE.mkdir(parents=True, exist_ok=True)
    stale = []
    for name, text in render().items():
        path = BASE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("stale generated manifests (run python3 deploy/k8s/generate.py):", ", ".join(stale))
        sys.exit(1)


if __name__ == "__main__":
    main()
