"""Offline checks of the rendered Kubernetes and Istio manifests of the reward saga platform.

    check.py manifests --bundle NAME FILE[,FILE...] [--external-secrets A,B] ...
    check.py self-test --context FILE[,FILE...] --broken-dir deploy/check/broken

A bundle is what is applied together (a k8s overlay's render plus an Istio render). Every
resource of a bundle is checked:
- core kinds against the Kubernetes OpenAPI schemas, strictly (kubernetes-validate): a
  misspelled or misplaced field is a finding;
- Istio kinds through cloudcoil-models-istio's pydantic models: the resource must validate, and
  dumping the model must give back exactly the input (a field the model does not know is dropped
  by the model, so it shows up as a difference);
- the platform's own rules (see `semantic`).
Every finding is printed; the exit status is 1 when there is one.

`self-test` checks each file of the broken directory together with the context (a valid
render): the file's `# expect: REGEX` lines must each match a finding that names one of the
file's resources. A broken case the checker lets through fails the self-test.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

K8S_VERSION = "1.30.0"

# The binaries of the platform image (Dockerfile: every binary of the workspace). The seven
# services, and the Telegram stand-in the dev overlay runs instead of Telegram.
SERVICE_BINARIES = {
    "orchestrator",
    "mission-worker",
    "reward-worker",
    "telegram-worker",
    "wallet-worker",
    "gift-worker",
    "mypage-worker",
}
IMAGE_BINARIES = SERVICE_BINARIES | {"telegram-stand-in"}
BINARY_DIR = "/usr/local/bin/"
# The platform image, whatever the registry and tag: reward-saga:dev,
# registry.example.com/reward-saga/reward-saga:0.1.0, ...
PLATFORM_IMAGE = re.compile(r"^(?:.*/)?reward-saga(?::[^@]*)?(?:@sha256:[0-9a-f]+)?$")
# The longest drain of a service after SIGTERM (README: "within about 10 s").
DRAIN_SECONDS = 10

SECRET_WORD = re.compile(r"password|secret|token|passwd|credential", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
# `password: $NATS_MISSION_PASSWORD` names an environment variable; it holds no secret.
ENV_REFERENCE = re.compile(
    r"(?:password|secret|token|passwd|credential)\w*\"?\s*[:=]\s*\"?\$\{?[A-Z_][A-Z0-9_]*\}?\"?\s*,?",
    re.IGNORECASE,
)

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


@dataclass
class Finding:
    bundle: str
    resource: str
    message: str

    def __str__(self) -> str:
        return f"[{self.bundle}] {self.resource}: {self.message}"


@dataclass
class Bundle:
    name: str
    docs: list[dict[str, Any]]
    external_secrets: set[str] = field(default_factory=set)
    findings: list[Finding] = field(default_factory=list)

    def add(self, doc: dict[str, Any] | str, message: str) -> None:
        self.findings.append(Finding(self.name, doc if isinstance(doc, str) else ref(doc), message))

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d.get("kind") in kinds]


def ref(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('name')}"


def namespace(doc: dict[str, Any]) -> str | None:
    return (doc.get("metadata") or {}).get("namespace")


def load(paths: Iterable[str]) -> list[dict[str, Any]]:
    docs = []
    for path in paths:
        for doc in yaml.safe_load_all(Path(path).read_text()):
            if doc:
                docs.append(doc)
    return docs


# ---------------------------------------------------------------------------------------------
# Schemas


def is_istio(doc: dict[str, Any]) -> bool:
    return str(doc.get("apiVersion", "")).split("/")[0].endswith(".istio.io")


_ISTIO_MODELS: dict[tuple[str, str], type] | None = None


def istio_models() -> dict[tuple[str, str], type]:
    """(apiVersion, kind) -> the cloudcoil model class, from every module of the package."""
    global _ISTIO_MODELS
    if _ISTIO_MODELS is None:
        import cloudcoil.models.istio as root
        from cloudcoil.resources import Resource

        models: dict[tuple[str, str], type] = {}
        for info in pkgutil.walk_packages(root.__path__, root.__name__ + "."):
            module = importlib.import_module(info.name)
            for value in vars(module).values():
                if (
                    isinstance(value, type)
                    and issubclass(value, Resource)
                    and value.__module__ == module.__name__
                ):
                    try:
                        gvk = value.gvk()
                    except ValueError:
                        continue
                    models[(gvk.api_version, gvk.kind)] = value
        _ISTIO_MODELS = models
    return _ISTIO_MODELS


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def differences(want: Any, got: Any, path: str = "") -> list[str]:
    """Where `got` (the model's dump) differs from `want` (the input)."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for key in want:
            if key not in got:
                out.append(f"unknown field {path}{key} (the Istio model drops it)")
            else:
                out.extend(differences(want[key], got[key], f"{path}{key}."))
        for key in got:
            if key not in want:
                out.append(f"field {path}{key} appears in the model's dump only")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{path.rstrip('.')}: list length {len(want)} became {len(got)}"]
        out = []
        for i, (w, g) in enumerate(zip(want, got)):
            out.extend(differences(w, g, f"{path}{i}."))
        return out
    if is_number(want) and is_number(got) and want == got:
        return []  # an int read into a float field (10 -> 10.0) is the same number
    if want != got or type(want) is not type(got):
        return [f"{path.rstrip('.')}: {want!r} comes back as {got!r}"]
    return []


_SCHEMA_CACHE: dict[str, list[str]] = {}


def schema_errors(doc: dict[str, Any], k8s_version: str) -> list[str]:
    key = json.dumps(doc, sort_keys=True)
    if key in _SCHEMA_CACHE:
        return _SCHEMA_CACHE[key]
    errors: list[str] = []
    if is_istio(doc):
        model = istio_models().get((doc.get("apiVersion"), doc.get("kind")))
        if model is None:
            errors.append(f"no Istio model for {doc.get('apiVersion')} {doc.get('kind')}")
        else:
            try:
                parsed = model.model_validate(doc)
            except Exception as error:  # pydantic.ValidationError, with every field at fault
                errors.append("Istio model: " + " ".join(str(error).split()))
            else:
                dumped = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
                errors.extend(differences(doc, dumped))
    else:
        import jsonschema
        import kubernetes_validate.utils as kv

        try:
            kv.validate(doc, k8s_version, strict=True)
        except kv.SchemaNotFoundError:
            errors.append(
                f"no Kubernetes {k8s_version} schema for {doc.get('apiVersion')} {doc.get('kind')}"
            )
        except jsonschema.ValidationError as error:
            where = ".".join(str(p) for p in error.path)
            errors.append(f"kubernetes-validate --strict ({k8s_version}): {where}: {error.message}")
    _SCHEMA_CACHE[key] = errors
    return errors


# ---------------------------------------------------------------------------------------------
# The platform's rules


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") not in WORKLOAD_KINDS:
        return None
    return (((doc.get("spec") or {}).get("template") or {}).get("spec")) or {}


def template_labels(doc: dict[str, Any]) -> dict[str, str]:
    return ((((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels")) or {}


def containers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("initContainer", c) for c in spec.get("initContainers") or []] + [
        ("container", c) for c in spec.get("containers") or []
    ]


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a label set."""
    if not selector:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def is_platform_container(container: dict[str, Any]) -> bool:
    return bool(PLATFORM_IMAGE.match(str(container.get("image", ""))))


def check_security(bundle: Bundle) -> None:
    """Every container: non-root, read-only root filesystem, no privilege escalation, no caps."""
    for doc in bundle.docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        pod_sc = spec.get("securityContext") or {}
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            bundle.add(doc, "uses the host's network, PID or IPC namespace")
        for where, c in containers(spec):
            sc = c.get("securityContext") or {}
            name = f"{where} {c.get('name')}"
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            user = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if non_root is not True:
                bundle.add(doc, f"{name} may run as root: runAsNonRoot is not true")
            if user == 0:
                bundle.add(doc, f"{name} runs as root: runAsUser 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                bundle.add(doc, f"{name} has a writable root filesystem (readOnlyRootFilesystem)")
            if sc.get("allowPrivilegeEscalation") is not False:
                bundle.add(doc, f"{name} allows privilege escalation")
            if sc.get("privileged"):
                bundle.add(doc, f"{name} is privileged")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                bundle.add(doc, f"{name} does not drop ALL capabilities")
            if (sc.get("capabilities") or {}).get("add"):
                bundle.add(doc, f"{name} adds capabilities")
            seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                bundle.add(doc, f"{name} has no seccompProfile RuntimeDefault")


def check_probes_and_resources(bundle: Bundle) -> None:
    """Workloads: probes and resources everywhere; the platform's containers run a known binary,
    probe /healthz (liveness, startup) and /readyz or /healthz (readiness), and have time to
    drain after SIGTERM."""
    for doc in bundle.docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        long_running = doc["kind"] != "Job"
        for where, c in containers(spec):
            name = f"{where} {c.get('name')}"
            resources = c.get("resources") or {}
            for part in ("requests", "limits"):
                for what in ("cpu", "memory"):
                    if what not in (resources.get(part) or {}):
                        bundle.add(doc, f"{name} has no resources.{part}.{what}")
            if long_running and where == "container":
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in c:
                        bundle.add(doc, f"{name} has no {probe}")
            if not is_platform_container(c):
                continue
            command = c.get("command") or []
            binary = command[0] if command else ""
            if not (binary.startswith(BINARY_DIR) and binary[len(BINARY_DIR):] in IMAGE_BINARIES):
                bundle.add(
                    doc,
                    f"{name} runs {binary or 'the image default'!r}, not one of the image's binaries "
                    f"({', '.join(sorted(IMAGE_BINARIES))} under {BINARY_DIR})",
                )
            for probe, allowed in (
                ("livenessProbe", {"/healthz"}),
                ("startupProbe", {"/healthz"}),
                ("readinessProbe", {"/readyz", "/healthz"}),
            ):
                if probe not in c:
                    continue
                http = c[probe].get("httpGet")
                if http is None:
                    bundle.add(doc, f"{name} {probe} is not an HTTP probe (the image has no shell)")
                elif http.get("path") not in allowed:
                    bundle.add(
                        doc,
                        f"{name} {probe} probe path {http.get('path')!r} is not one of "
                        f"{', '.join(sorted(allowed))}",
                    )
            if long_running and binary[len(BINARY_DIR):] in SERVICE_BINARIES:
                grace = spec.get("terminationGracePeriodSeconds", 30)
                pre_stop = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
                sleep = pre_stop.get("seconds", 0)
                if not pre_stop:
                    bundle.add(doc, f"{name} has no preStop sleep (endpoints update before SIGTERM)")
                if grace < sleep + DRAIN_SECONDS + 5:
                    bundle.add(
                        doc,
                        f"terminationGracePeriodSeconds {grace} leaves no room for preStop {sleep} s "
                        f"+ the {DRAIN_SECONDS} s drain",
                    )


def check_scaling_targets(bundle: Bundle) -> None:
    """HPAs target, and PDBs select, a Deployment or StatefulSet of the bundle."""
    workloads = bundle.of_kind("Deployment", "StatefulSet")
    names = {(w["kind"], w["metadata"]["name"], namespace(w)) for w in workloads}
    for hpa in bundle.of_kind("HorizontalPodAutoscaler"):
        target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        key = (target.get("kind"), target.get("name"), namespace(hpa))
        if key not in names:
            bundle.add(
                hpa,
                f"targets {target.get('kind')}/{target.get('name')}, which is not a Deployment or "
                "StatefulSet of the render",
            )
    for pdb in bundle.of_kind("PodDisruptionBudget"):
        selector = (pdb.get("spec") or {}).get("selector") or {}
        if not any(
            namespace(w) == namespace(pdb) and selector_matches(selector, template_labels(w))
            for w in workloads
        ):
            bundle.add(pdb, "selects no Deployment or StatefulSet of the render")


def check_services(bundle: Bundle) -> None:
    """Every Service selects pods of a workload that has the target port."""
    workloads = bundle.of_kind(*WORKLOAD_KINDS)
    for svc in bundle.of_kind("Service"):
        spec = svc.get("spec") or {}
        selector = spec.get("selector")
        if not selector:
            continue
        backing = [
            w
            for w in workloads
            if namespace(w) == namespace(svc)
            and selector_matches({"matchLabels": selector}, template_labels(w))
        ]
        if not backing:
            bundle.add(svc, "selects no pods of the render")
            continue
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            if isinstance(target, str):
                named = {
                    p.get("name")
                    for w in backing
                    for _, c in containers(pod_spec(w) or {})
                    for p in c.get("ports") or []
                }
                if target not in named:
                    bundle.add(svc, f"targetPort {target!r} is no container port of its pods")


def secret_word_in_text(text: str) -> str | None:
    """The first line of a ConfigMap value that looks like it carries a secret."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "//")):
            continue
        if URL_WITH_PASSWORD.search(stripped):
            return stripped
        if SECRET_WORD.search(ENV_REFERENCE.sub("", stripped)):
            return stripped
    return None


def check_configmaps(bundle: Bundle) -> None:
    """No secret in a ConfigMap: no key named like one, no value holding one."""
    for cm in bundle.of_kind("ConfigMap"):
        for part in ("data", "binaryData"):
            for key, value in (cm.get(part) or {}).items():
                if SECRET_WORD.search(key):
                    bundle.add(cm, f"key {key!r} looks like a secret: it belongs in a Secret")
                    continue
                line = secret_word_in_text(str(value))
                if line is not None:
                    shown = URL_WITH_PASSWORD.sub("<scheme>://<user>:***@", line)[:120]
                    bundle.add(
                        cm, f"value of {key!r} looks like it holds a secret ({shown!r}): use a Secret"
                    )


def check_references(bundle: Bundle) -> None:
    """ConfigMaps, Secrets and their keys referenced by workloads exist in the bundle (Secrets
    created outside it are listed with --external-secrets)."""
    secrets = {
        (namespace(s), s["metadata"]["name"]): set((s.get("data") or {}) | (s.get("stringData") or {}))
        for s in bundle.of_kind("Secret")
    }
    configmaps = {
        (namespace(c), c["metadata"]["name"]): set((c.get("data") or {}) | (c.get("binaryData") or {}))
        for c in bundle.of_kind("ConfigMap")
    }
    service_accounts = {(namespace(s), s["metadata"]["name"]) for s in bundle.of_kind("ServiceAccount")}

    def want(doc, kind, name, key, optional):
        store = secrets if kind == "Secret" else configmaps
        known = store.get((namespace(doc), name))
        if known is None:
            if optional or (kind == "Secret" and name in bundle.external_secrets):
                return
            bundle.add(doc, f"refers to {kind} {name!r}, which is not in the render")
        elif key is not None and key not in known:
            bundle.add(doc, f"refers to key {key!r} of {kind} {name!r}, which has no such key")

    for doc in bundle.docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        sa = spec.get("serviceAccountName")
        if sa and (namespace(doc), sa) not in service_accounts:
            bundle.add(doc, f"runs as ServiceAccount {sa!r}, which is not in the render")
        for volume in spec.get("volumes") or []:
            if "secret" in volume:
                s = volume["secret"]
                want(doc, "Secret", s.get("secretName"), None, s.get("optional"))
            if "configMap" in volume:
                c = volume["configMap"]
                want(doc, "ConfigMap", c.get("name"), None, c.get("optional"))
        for _, c in containers(spec):
            for source in c.get("envFrom") or []:
                if "secretRef" in source:
                    want(doc, "Secret", source["secretRef"].get("name"), None, source["secretRef"].get("optional"))
                if "configMapRef" in source:
                    r = source["configMapRef"]
                    want(doc, "ConfigMap", r.get("name"), None, r.get("optional"))
            for env in c.get("env") or []:
                value_from = env.get("valueFrom") or {}
                if "secretKeyRef" in value_from:
                    r = value_from["secretKeyRef"]
                    want(doc, "Secret", r.get("name"), r.get("key"), r.get("optional"))
                if "configMapKeyRef" in value_from:
                    r = value_from["configMapKeyRef"]
                    want(doc, "ConfigMap", r.get("name"), r.get("key"), r.get("optional"))


def service_for_host(bundle: Bundle, host: str, ns: str | None) -> dict[str, Any] | None:
    """The Service an Istio host names: `name`, `name.ns`, `name.ns.svc[.cluster.local]`."""
    parts = host.split(".")
    name = parts[0]
    if len(parts) > 1:
        if parts[2:] not in ([], ["svc"], ["svc", "cluster", "local"]):
            return None
        ns = parts[1]
    for svc in bundle.of_kind("Service"):
        if svc["metadata"]["name"] == name and namespace(svc) == ns:
            return svc
    return None


def can_match_post_without_key(match: dict[str, Any]) -> bool:
    method = match.get("method")
    if method:
        if "exact" in method and method["exact"] != "POST":
            return False
        if "prefix" in method and not "POST".startswith(method["prefix"]):
            return False
        if "regex" in method and not re.fullmatch(method["regex"], "POST"):
            return False
    headers = {k.lower(): v for k, v in (match.get("headers") or {}).items()}
    key = headers.get("idempotency-key")
    # the route requires a non-empty Idempotency-Key
    if key and ("regex" in key or "prefix" in key or "exact" in key):
        return False
    return True


def check_istio(bundle: Bundle) -> None:
    """VirtualServices route to Services of the render, on a port they have, through a Gateway
    of the render, and never retry a POST that carries no Idempotency-Key; DestinationRules and
    policies name things that exist."""
    gateways = {(namespace(g), g["metadata"]["name"]) for g in bundle.of_kind("Gateway")}
    service_accounts = {(namespace(s), s["metadata"]["name"]) for s in bundle.of_kind("ServiceAccount")}
    pod_labels = [(namespace(w), template_labels(w)) for w in bundle.of_kind(*WORKLOAD_KINDS)]
    for vs in bundle.of_kind("VirtualService"):
        spec = vs.get("spec") or {}
        for gw in spec.get("gateways") or []:
            if gw == "mesh":
                continue
            gw_ns, _, gw_name = gw.rpartition("/")
            if ((gw_ns or namespace(vs)), gw_name) not in gateways:
                bundle.add(vs, f"uses Gateway {gw!r}, which is not in the render")
        for route in spec.get("http") or []:
            label = route.get("name", "?")
            for dest in route.get("route") or []:
                d = dest.get("destination") or {}
                svc = service_for_host(bundle, d.get("host", ""), namespace(vs))
                if svc is None:
                    bundle.add(vs, f"route {label}: destination {d.get('host')!r} is no Service of the render")
                    continue
                ports = [p.get("port") for p in (svc.get("spec") or {}).get("ports") or []]
                number = (d.get("port") or {}).get("number")
                if number is None and len(ports) != 1:
                    bundle.add(vs, f"route {label}: no port given and {ref(svc)} has {len(ports)}")
                elif number is not None and number not in ports:
                    bundle.add(vs, f"route {label}: port {number} is not a port of {ref(svc)} ({ports})")
            if "timeout" not in route:
                bundle.add(vs, f"route {label} has no timeout")
            attempts = (route.get("retries") or {}).get("attempts")
            matches = route.get("match") or [{}]
            if attempts != 0 and any(can_match_post_without_key(m) for m in matches):
                bundle.add(
                    vs,
                    f"route {label} may retry a POST without an Idempotency-Key "
                    "(set retries.attempts: 0, or match on the header)",
                )
    for dr in bundle.of_kind("DestinationRule"):
        host = (dr.get("spec") or {}).get("host", "")
        if service_for_host(bundle, host, namespace(dr)) is None:
            bundle.add(dr, f"host {host!r} is no Service of the render")
    for policy in bundle.of_kind("AuthorizationPolicy", "PeerAuthentication", "Telemetry"):
        spec = policy.get("spec") or {}
        selector = spec.get("selector")
        if selector and not any(
            ns == namespace(policy) and selector_matches(selector, labels) for ns, labels in pod_labels
        ):
            bundle.add(policy, "its selector matches no pod of the render")
        for rule in spec.get("rules") or []:
            for source in rule.get("from") or []:
                for principal in (source.get("source") or {}).get("principals") or []:
                    m = re.fullmatch(r"cluster\.local/ns/([^/]+)/sa/([^/]+)", principal)
                    if m and m.group(1) == namespace(policy) and (m.group(1), m.group(2)) not in service_accounts:
                        bundle.add(policy, f"principal {principal!r} is no ServiceAccount of the render")


SEMANTIC_CHECKS = (
    check_security,
    check_probes_and_resources,
    check_scaling_targets,
    check_services,
    check_configmaps,
    check_references,
    check_istio,
)


def check_bundle(bundle: Bundle, k8s_version: str) -> list[Finding]:
    seen: set[tuple[str, str, str | None]] = set()
    for doc in bundle.docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            bundle.add("?", f"not a Kubernetes resource: {str(doc)[:80]}")
            continue
        key = (doc["kind"], (doc.get("metadata") or {}).get("name"), namespace(doc))
        if key in seen:
            bundle.add(doc, "appears twice in the render")
        seen.add(key)
        for error in schema_errors(doc, k8s_version):
            bundle.add(doc, error)
    bundle.docs = [d for d in bundle.docs if isinstance(d, dict) and "kind" in d]
    for check in SEMANTIC_CHECKS:
        check(bundle)
    return bundle.findings


# ---------------------------------------------------------------------------------------------
# Command line


def cmd_manifests(args: argparse.Namespace) -> int:
    total = 0
    for name, files in args.bundle:
        bundle = Bundle(name, load(files.split(",")), set(filter(None, args.external_secrets.split(","))))
        findings = check_bundle(bundle, args.k8s_version)
        kinds = len(bundle.docs)
        istio = sum(1 for d in bundle.docs if is_istio(d))
        for finding in findings:
            print(f"FINDING {finding}")
        print(
            f"{name}: {kinds} resources ({kinds - istio} Kubernetes, {istio} Istio), "
            f"{len(findings)} finding(s)"
        )
        total += len(findings)
    return 1 if total else 0


def cmd_self_test(args: argparse.Namespace) -> int:
    context = load(args.context.split(","))
    failures = 0
    cases = sorted(Path(args.broken_dir).glob("*.yaml"))
    if not cases:
        print(f"self-test: no broken cases in {args.broken_dir}")
        return 1
    for case in cases:
        text = case.read_text()
        expects = re.findall(r"^# expect: (.+)$", text, re.MULTILINE)
        broken = load([str(case)])
        names = {ref(d) for d in broken}
        bundle = Bundle(f"broken/{case.name}", context + broken)
        findings = [f for f in check_bundle(bundle, args.k8s_version) if f.resource in names]
        missing = [e for e in expects if not any(re.search(e, str(f)) for f in findings)]
        if not expects:
            print(f"FAIL {case.name}: no '# expect:' line")
            failures += 1
        elif missing:
            print(f"FAIL {case.name}: not caught: {missing}")
            for f in findings:
                print(f"     got: {f}")
            failures += 1
        else:
            print(f"ok   {case.name}: caught ({findings[0].message[:100]})")
    print(f"self-test: {len(cases) - failures} passed, {failures} failed")
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k8s-version", default=K8S_VERSION)
    sub = parser.add_subparsers(dest="command", required=True)
    manifests = sub.add_parser("manifests", help="check rendered bundles")
    manifests.add_argument("--bundle", nargs=2, action="append", metavar=("NAME", "FILES"), required=True)
    manifests.add_argument("--external-secrets", default="", help="Secrets created outside the render")
    self_test = sub.add_parser("self-test", help="the checker must catch every broken case")
    self_test.add_argument("--context", required=True, help="valid renders the broken cases join")
    self_test.add_argument("--broken-dir", required=True)
    args = parser.parse_args(argv)
    if args.command == "manifests":
        return cmd_manifests(args)
    return cmd_self_test(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
