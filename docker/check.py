#!/usr/bin/env python3
"""Static checks of the deployment files, for CI machines without Docker.

- docker/docker-compose.yml: parses; validates against the Compose
  specification's JSON schema (the copy shipped in the docker-compose 1.29.2
  wheel, passed with --compose-schema-wheel; the top-level `name`, newer than
  that schema, is checked separately); every service has an image;
  references (depends_on, network_mode: service:X, named volumes) resolve;
  bind-mounted files exist; `docker compose config` too when the plugin is
  installed.
- deploy/k8s: the base and the example overlay render with kustomize (built by
  tools/kustomize/build.sh); the output validates against Kubernetes' schemas
  (`kubernetes-validate`, strict, K8S_VERSION) and, for ClusterSPIFFEID,
  PodMonitor and PrometheusRule, their CRDs' schemas; each sidecar is a native
  sidecar running as the image's numeric USER, read-only, without
  capabilities, with the SPIFFE CSI volume and a grace period above its
  shutdown delay + drain; the ClusterSPIFFEID issues exactly the IDs the
  configs and the policy name; the PrometheusRule's alerts are operations.md's.
- Every sidecar in the compose file and in deploy/k8s: its config, laid out as the
  container sees it (mounted files, environment), passes `a2a-sidecar check`.
- the compose SPIRE agent mints a fresh join token at every start; the dev IdP
  follows SPIRE's JWT keys through the OIDC discovery provider (oidc.conf).
- docker/spire/*.conf parse as HCL, agree on the trust domain and pass `spire-server/agent validate`
  (when tools/spire/build.sh has built them); the compose images are the SPIRE version go.mod pins;
  each compose sidecar stop_grace_period is above its shutdown_delay + drain_timeout.
- docker/Dockerfile: production stage non-root (numeric USER), without the
  `dev` feature, with a HEALTHCHECK that runs `a2a-sidecar probe`; every base
  image pinned by digest; one target cache per build stage.

Usage: docker/check.py PATH-TO-a2a-sidecar [--compose-schema-wheel WHEEL] [--kustomize BIN] [--crds DIR]
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import hcl2
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
SIDECAR_IMAGES = ("a2a-sidecar:", "ghcr.io/example/a2a-sidecar:")
# The Kubernetes release the manifests are validated against (a current one:
# native sidecars are GA since 1.33).
K8S_VERSION = "1.37.0"
# The trust domain SPIRE runs with in the example (its ClusterSPIFFEID's .TrustDomain).
SPIRE_TRUST_DOMAIN = "aim.microsoft.com"

failures = []


def fail(where, why):
    failures.append(f"{where}: {why}")


def stand_in(name):
    """A value for a variable the environment does not set: long enough for
    any field that checks strength (an admin key needs 32 characters)."""
    return f"check-only-{name.lower()}-not-a-real-value"


def interpolate(value):
    """Compose variable interpolation: ${X}, ${X:-default}, ${X:?error}."""

    def one(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in os.environ:
            return os.environ[name]
        return arg if op == ":-" else stand_in(name)

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, str(value))


def sidecar_check(binary, where, files, env, config_path):
    """Lays `files` ({container path: text}) out under a temp root and runs `check`."""
    with tempfile.TemporaryDirectory(prefix="a2a-check-") as root:
        for path, text in files.items():
            target = Path(root) / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("SPIFFE_", "ENTRA_", "AZURE_", "A2A_"))}
        config = Path(root) / config_path.lstrip("/")
        run = subprocess.run([binary, "check", "--config", str(config)], env={**clean, **env}, capture_output=True, text=True)
        if run.returncode != 0:
            fail(where, f"`a2a-sidecar check` exit {run.returncode}:\n{run.stdout}{run.stderr}")
        else:
            print(f"ok   {where}: a2a-sidecar check")


def check_compose_schema(doc, wheel):
    """Validates against the Compose spec schema inside a docker-compose wheel."""
    import jsonschema

    with zipfile.ZipFile(wheel) as z:
        schema = yaml.safe_load(z.read("compose/config/compose_spec.json"))
    doc = dict(doc)
    name = doc.pop("name", None)
    if name is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", str(name)):
        fail("docker-compose.yml", f"project name `{name}` is not a valid Compose project name")
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
    for e in errors:
        fail("docker-compose.yml " + ".".join(str(p) for p in e.path), e.message)
    if not errors:
        print("ok   docker-compose.yml: Compose spec schema")


def check_compose(binary, schema_wheel):
    path = DOCKER / "docker-compose.yml"
    doc = yaml.safe_load(path.read_text())
    if schema_wheel:
        check_compose_schema(doc, schema_wheel)
    services, volumes = doc.get("services", {}), set((doc.get("volumes") or {}).keys())
    for name, svc in services.items():
        where = f"docker-compose.yml services.{name}"
        if "image" not in svc and "build" not in svc:
            fail(where, "no image or build")
        deps = svc.get("depends_on", {})
        for dep in deps if isinstance(deps, (list, dict)) else []:
            if dep not in services:
                fail(where, f"depends_on unknown service `{dep}`")
        mode = svc.get("network_mode", "")
        if mode.startswith("service:") and mode.split(":", 1)[1] not in services:
            fail(where, f"network_mode names unknown service `{mode}`")
        if mode and "ports" in svc:
            fail(where, "ports on a service that shares another's network namespace")
        files = {}
        for mount in svc.get("volumes", []):
            source, target = mount.split(":")[:2]
            if source.startswith((".", "/")):
                host = (DOCKER / source).resolve() if source.startswith(".") else Path(source)
                if source.startswith(".") and not host.exists():
                    fail(where, f"bind mount source `{source}` does not exist")
                elif host.is_file() and source.startswith("."):
                    files[target] = host.read_text()
            elif source not in volumes:
                fail(where, f"volume `{source}` is not declared")
        if str(svc.get("image", "")).startswith(SIDECAR_IMAGES):
            env = {k: interpolate(v) for k, v in (svc.get("environment") or {}).items()}
            sidecar_check(binary, where, files, env, "/etc/a2a-sidecar/config.yaml")
            # Docker's SIGKILL must not cut the shutdown delay or the drain short.
            runtime = (yaml.safe_load(files.get("/etc/a2a-sidecar/config.yaml", "")) or {}).get("runtime") or {}
            needed = seconds(runtime.get("shutdown_delay", "0s")) + seconds(runtime.get("drain_timeout", "10s"))
            grace = seconds(str(svc.get("stop_grace_period", "10s")))
            if grace <= needed:
                fail(where, f"stop_grace_period {grace:g} s is not above shutdown_delay + drain_timeout ({needed:g} s)")
            else:
                print(f"ok   {where}: stop_grace_period {grace:g} s > shutdown_delay + drain_timeout ({needed:g} s)")
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        run = subprocess.run(["docker", "compose", "-f", str(path), "config", "-q"], capture_output=True, text=True,
                             env={**os.environ, "A2A_ADMIN_KEY": os.environ.get("A2A_ADMIN_KEY", stand_in("A2A_ADMIN_KEY"))})
        if run.returncode != 0:
            fail("docker-compose.yml", f"docker compose config: {run.stderr}")
        else:
            print("ok   docker-compose.yml: docker compose config")
    else:
        print("skip docker compose config (no compose plugin here); the checks above ran")
    print(f"ok   docker-compose.yml: {len(services)} services parse and resolve")


def strict_schema(node):
    """A CRD's structural schema, made strict like `kubernetes-validate --strict`:
    objects that list their properties accept no others (unless the CRD says
    to preserve unknown fields)."""
    if isinstance(node, dict):
        node = {k: strict_schema(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return node
    if isinstance(node, list):
        return [strict_schema(v) for v in node]
    return node


def crd_schemas(crd_dir):
    """{(apiVersion, kind): (schema, scope)} from the CRD files tools/kustomize/build.sh copied."""
    schemas = {}
    for path in sorted(Path(crd_dir).glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = (strict_schema(version["schema"]["openAPIV3Schema"]), spec["scope"])
    return schemas


def check_k8s_schemas(docs, rendered, crd_dir):
    """Built-in kinds: Kubernetes' own OpenAPI schemas (`kubernetes-validate`,
    strict: unknown fields fail) at K8S_VERSION; custom resources: their CRD's
    schema, at the version tools/kustomize/build.sh pins."""
    import jsonschema

    crds = crd_schemas(crd_dir)
    builtin = []
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        where = f"{rendered.name} {d.get('kind')}/{d['metadata'].get('name')}"
        if key in crds:
            schema, scope = crds[key]
            errors = list(jsonschema.Draft7Validator(schema).iter_errors(d))
            for e in errors:
                fail(where, f"{'.'.join(str(p) for p in e.path)}: {e.message}")
            if (scope == "Cluster") == ("namespace" in d["metadata"]):
                fail(where, f"a {scope}-scoped resource {'with' if scope == 'Cluster' else 'without'} a namespace")
            if not errors:
                print(f"ok   {where}: its CustomResourceDefinition's schema (strict)")
        elif "." in str(d.get("apiVersion", "")).split("/")[0] and d["apiVersion"].split("/")[0].endswith(("coreos.com", "spiffe.io")):
            fail(where, "a custom resource whose CRD tools/kustomize/build.sh did not fetch")
        else:
            builtin.append(d)
    tool = Path(sys.executable).parent / "kubernetes-validate"
    if not tool.exists():
        fail("deploy/k8s", "kubernetes-validate is not installed beside this python")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as out:
        yaml.safe_dump_all(builtin, out)
        out.flush()
        run = subprocess.run([str(tool), "--strict", "-k", K8S_VERSION, out.name], capture_output=True, text=True)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("ERROR")]
    if run.returncode != 0 or errors:
        fail(rendered.name, "\n".join(errors) or run.stdout + run.stderr)
    else:
        print(f"ok   {rendered.name}: {len(builtin)} resources against Kubernetes {K8S_VERSION}'s schemas (strict)")


def render_template(template, pod_meta, trust_domain):
    """spire-controller-manager's spiffeIDTemplate, for the forms the example
    uses ({{ .TrustDomain }}, {{ .PodMeta.Namespace }}, {{ .PodMeta.Name }},
    {{ index .PodMeta.Labels "k" }}); anything else fails the check."""

    def one(m):
        expr = m.group(1).strip()
        if expr == ".TrustDomain":
            return trust_domain
        if expr in (".PodMeta.Namespace", ".PodMeta.Name"):
            return pod_meta[expr.split(".")[-1].lower()]
        label = re.fullmatch(r'index \.PodMeta\.Labels "([^"]+)"', expr)
        if label and label.group(1) in pod_meta["labels"]:
            return pod_meta["labels"][label.group(1)]
        fail("ClusterSPIFFEID", f"template expression `{expr}` is not one this check renders, or names a missing label")
        return "?"

    return re.sub(r"\{\{(.*?)\}\}", one, template)


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).get("matchLabels", {}).items())


def sidecar_container(pod):
    """The a2a-sidecar container of a pod spec, and whether it is a native sidecar."""
    for c in pod.get("initContainers", []):
        if str(c.get("image", "")).startswith(SIDECAR_IMAGES):
            return c, c.get("restartPolicy") == "Always"
    for c in pod.get("containers", []):
        if str(c.get("image", "")).startswith(SIDECAR_IMAGES):
            return c, False
    return None, False


def check_pod(where, pod, c, native, user):
    """What Kubernetes needs to start the sidecar, and to start and stop it in order."""
    if not native:
        fail(where, "the sidecar must be a native sidecar (an initContainer with restartPolicy: Always)")
    if "startupProbe" not in c:
        fail(where, "no startupProbe: the app would start before the sidecar holds an SVID")
    for probe in ("readinessProbe", "livenessProbe"):
        if probe not in c:
            fail(where, f"no {probe}")
    context = pod.get("securityContext") or {}
    if (context.get("runAsUser"), context.get("runAsGroup")) != user or not context.get("runAsNonRoot"):
        fail(where, f"pod runAsNonRoot/runAsUser/runAsGroup {context} differ from the image's numeric USER {user}")
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        sc = container.get("securityContext") or {}
        if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                and (sc.get("capabilities") or {}).get("drop") == ["ALL"]):
            fail(f"{where}/{container['name']}", "needs readOnlyRootFilesystem, allowPrivilegeEscalation: false, capabilities.drop [ALL]")
    if not (c.get("resources") or {}).get("limits", {}).get("memory"):
        fail(where, "no memory limit")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    csi = [m for m in c.get("volumeMounts", []) if (volumes.get(m["name"], {}).get("csi") or {}).get("driver") == "csi.spiffe.io"]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    if not csi or csi[0]["mountPath"] != "/spiffe-workload-api":
        fail(where, "the SPIFFE CSI driver's volume (csi.spiffe.io) must be mounted at /spiffe-workload-api")
    elif env.get("SPIFFE_ENDPOINT_SOCKET") != "unix:///spiffe-workload-api/spire-agent.sock":
        fail(where, "SPIFFE_ENDPOINT_SOCKET must be unix:///spiffe-workload-api/spire-agent.sock (the SPIRE chart's socket in the CSI mount)")


def check_k8s(binary, kustomize, crd_dir, user):
    """deploy/k8s: the example overlay (and the base alone) render with
    kustomize; the output validates; each sidecar's config passes `check`;
    the ClusterSPIFFEID issues exactly the IDs the configs and policies name;
    the PrometheusRule's alerts are operations.md's."""
    if not Path(kustomize).exists():
        fail("deploy/k8s", f"no kustomize at {kustomize} (run tools/kustomize/build.sh)")
        return
    rendered = {}
    for overlay in ("base", "example"):
        run = subprocess.run([kustomize, "build", str(ROOT / "deploy/k8s" / overlay)], capture_output=True, text=True)
        if run.returncode != 0:
            fail(f"deploy/k8s/{overlay}", f"kustomize build: {run.stderr}")
            return
        rendered[overlay] = [d for d in yaml.safe_load_all(run.stdout) if d]
        print(f"ok   deploy/k8s/{overlay}: kustomize build ({len(rendered[overlay])} resources)")
        check_k8s_schemas(rendered[overlay], Path(f"deploy/k8s/{overlay}"), crd_dir)
    docs = rendered["example"]
    configmaps = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    # The API server labels every namespace with its name.
    namespaces = {
        d["metadata"]["name"]: {**d["metadata"].get("labels", {}), "kubernetes.io/metadata.name": d["metadata"]["name"]}
        for d in docs
        if d["kind"] == "Namespace"
    }
    spiffeids = [d for d in docs if d["kind"] == "ClusterSPIFFEID"]
    issued, named = {}, set()
    for d in (d for d in docs if d["kind"] == "Deployment"):
        ns, pod_meta = d["metadata"].get("namespace"), d["spec"]["template"]["metadata"]
        pod = d["spec"]["template"]["spec"]
        where = f"deploy/k8s/example {ns}/{d['metadata']['name']}"
        c, native = sidecar_container(pod)
        if c is None:
            continue
        check_pod(where, pod, c, native, user)
        files = {}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for m in c.get("volumeMounts", []):
            cm = (volumes.get(m["name"], {}).get("configMap") or {}).get("name")
            if cm and (ns, cm) not in configmaps:
                fail(where, f"ConfigMap `{cm}` is not in the rendered output")
            for key, text in configmaps.get((ns, cm), {}).items():
                files[f"{m['mountPath']}/{key}"] = text
        env = {e["name"]: e.get("value", stand_in(e["name"])) for e in c.get("env", [])}
        args = c.get("args", [])
        config_path = args[args.index("--config") + 1] if "--config" in args else "/etc/a2a-sidecar/config.yaml"
        sidecar_check(binary, where, files, env, config_path)
        config = yaml.safe_load(files.get(config_path, "")) or {}
        runtime = config.get("runtime") or {}
        needed = seconds(runtime.get("shutdown_delay", "0s")) + seconds(runtime.get("drain_timeout", "10s"))
        if pod.get("terminationGracePeriodSeconds", 30) <= needed:
            fail(where, f"terminationGracePeriodSeconds is not above shutdown_delay + drain_timeout ({needed:g} s)")
        # The SPIFFE IDs this sidecar names: its allow-list, its routes' server IDs, its policy's callers.
        named |= set((config.get("inbound") or {}).get("allowed_callers", []))
        named |= {r["server_id"] for r in (config.get("outbound") or {}).get("routes", [])}
        policy_file = (config.get("policy") or {}).get("file")
        if policy_file:
            policy = yaml.safe_load(files.get(str(Path(config_path).parent / policy_file), "")) or {}
            for entry in policy.get("policies", []) + policy.get("federated_policies", []):
                named.add(entry.get("spiffe_id") or entry.get("spiffe_id_prefix"))
        # The ID each ClusterSPIFFEID issues to this pod.
        meta = {"namespace": ns, "name": d["metadata"]["name"], "labels": pod_meta.get("labels", {})}
        for cs in spiffeids:
            if selects(cs["spec"].get("namespaceSelector"), namespaces.get(ns, {"kubernetes.io/metadata.name": ns})) \
                    and selects(cs["spec"].get("podSelector"), meta["labels"]):
                issued.setdefault(d["metadata"]["name"], []).append(
                    render_template(cs["spec"]["spiffeIDTemplate"], meta, SPIRE_TRUST_DOMAIN))
    for workload, ids in sorted(issued.items()):
        if len(ids) != 1:
            fail(f"deploy/k8s/example {workload}", f"{len(ids)} ClusterSPIFFEIDs select its pods: {ids}")
    ids = {i for v in issued.values() for i in v}
    if not ids or named != ids:
        fail("deploy/k8s/example ClusterSPIFFEID", f"issues {sorted(ids)}; the configs and policy name {sorted(named)}")
    else:
        print(f"ok   deploy/k8s/example: the ClusterSPIFFEID issues exactly the IDs the allow-list, routes and policy name: {sorted(ids)}")
    documented = re.sub(r"\s+", " ", (ROOT / "docs/operations.md").read_text())
    rules = [r for d in docs if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"] for r in g["rules"]]
    for rule in rules:
        if re.sub(r"\s+", " ", str(rule["expr"]).strip()) not in documented:
            fail(f"PrometheusRule {rule.get('alert')}", "its expression is not among docs/operations.md's alerts")
    if rules:
        print(f"ok   deploy/k8s/example: {len(rules)} PrometheusRule alerts, each in docs/operations.md")
    else:
        fail("deploy/k8s/example", "no PrometheusRule")


def seconds(duration):
    """`30s`, `5m`, `1h`, `500ms` (the sidecar's and compose's forms) in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(duration).strip())
    if not match:
        fail("duration", f"`{duration}` is not a duration")
        return 0.0
    value, unit = float(match.group(1)), match.group(2)
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def check_spire():
    domains = {}
    for path in sorted((DOCKER / "spire").glob("*.conf")):
        if path.name == "oidc.conf":
            continue  # the OIDC discovery provider's: check_spire_oidc
        try:
            conf = hcl2.loads(path.read_text())
        except Exception as e:  # noqa: BLE001 - any parse error is the finding
            fail(path.name, f"not valid HCL: {e}")
            continue
        section = (conf.get("server") or conf.get("agent") or [{}])[0]
        domains[path.name] = section.get("trust_domain")
        if not conf.get("plugins"):
            fail(path.name, "no plugins block")
        print(f"ok   spire/{path.name}: HCL parses")
        # And SPIRE itself accepts it (the binaries tools/spire/build.sh built, when present).
        kind = "server" if conf.get("server") else "agent"
        binary = ROOT / "target" / "spire" / f"spire-{kind}"
        if binary.exists():
            out = subprocess.run([str(binary), "validate", "-config", str(path)], capture_output=True, text=True)
            if out.returncode != 0:
                fail(path.name, f"spire-{kind} validate: {out.stdout}{out.stderr}")
            else:
                print(f"ok   spire/{path.name}: spire-{kind} validate")
    if len(set(domains.values())) != 1:
        fail("spire/*.conf", f"trust domains differ: {domains}")
    # The images run the SPIRE version the integration tests build and run.
    pinned = re.search(r"github\.com/spiffe/spire v(\S+)", (ROOT / "tools/spire/go.mod").read_text())
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    images = [s.get("image", "") for s in compose.get("services", {}).values()]
    spire_images = [i for i in images if i.startswith("ghcr.io/spiffe/")]
    if not pinned or not spire_images or any(not i.endswith(":" + pinned.group(1)) for i in spire_images):
        fail("docker-compose.yml", f"SPIRE images {spire_images} are not the version tools/spire/go.mod pins")
    else:
        print(f"ok   docker-compose.yml: SPIRE images are {pinned.group(1)}, as tools/spire/go.mod pins")


def check_spire_compose():
    """The compose stack's SPIRE wiring that only a running stack would
    otherwise show: a fresh join token at every agent start, and the dev
    IdP following SPIRE's JWT keys through the OIDC discovery provider."""
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    services = compose.get("services", {})
    agent_conf = hcl2.loads((DOCKER / "spire/agent.conf").read_text())
    start = (DOCKER / "spire/agent-start.sh").read_text()
    bootstrap = (DOCKER / "spire/bootstrap.sh").read_text()
    agent = services.get("spire-agent", {})
    if "join_token" in (agent_conf.get("agent") or [{}])[0]:
        fail("spire/agent.conf", "a join_token in the file is single-use: it must come from agent-start.sh at each start")
    elif "spire/agent-start.sh" not in " ".join(agent.get("entrypoint", [])) \
            or "token generate" not in start or "-joinToken" not in start or "token generate" in bootstrap:
        fail("docker-compose.yml spire-agent", "must start through spire/agent-start.sh, which mints the join token")
    else:
        print("ok   docker-compose.yml spire-agent: a fresh join token at every start (spire/agent-start.sh)")
    oidc = hcl2.loads((DOCKER / "spire/oidc.conf").read_text())
    provider = services.get("spire-oidc", {})
    address = str(oidc.get("insecure_addr", "")).strip('"')
    socket = str((oidc.get("server_api") or [{}])[0].get("address", "")).strip('"')
    mounted = [v.split(":")[1] for v in provider.get("volumes", []) if v.startswith("spire-server-socket:")]
    issuer = re.search(r"--data '([^']+)' \"\$IDP/admin/trust-issuer\"", bootstrap)
    problems = []
    if provider.get("network_mode") != "service:dev-idp":
        problems.append("spire-oidc must share the dev IdP's network namespace (its keys are read over loopback)")
    if not issuer or issuer.group(1) != f"http://{address}":
        problems.append(f"bootstrap.sh must make the dev IdP trust http://{address} (oidc.conf insecure_addr)")
    if not mounted or not socket.startswith(f"unix://{mounted[0]}/"):
        problems.append(f"oidc.conf server_api {socket} is not in the spire-server-socket volume {mounted}")
    for problem in problems:
        fail("spire/oidc.conf", problem)
    if not problems:
        print(f"ok   spire/oidc.conf: the dev IdP follows SPIRE's JWT keys at http://{address} (server API {socket})")


def check_dockerfile():
    """Returns the production stage's numeric (uid, gid), which the pods must run as."""
    text = (DOCKER / "Dockerfile").read_text()
    final = text[text.rindex("\nFROM "):]
    user = re.findall(r"^USER\s+(\S+)", final, re.M)
    uid_gid = None
    if not user or not re.fullmatch(r"[1-9][0-9]*:[0-9]+", user[-1]):
        fail("Dockerfile (last stage)", f"USER must be a numeric non-root uid:gid (Kubernetes' runAsNonRoot refuses names): {user}")
    else:
        uid_gid = tuple(int(x) for x in user[-1].split(":"))
    # Every base image by digest (FROM lines name the pinned ARGs, or an earlier stage).
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I))
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    for image in re.findall(r"^FROM\s+(\S+)", text, re.M):
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        if resolved not in stages and not re.search(r"@sha256:[0-9a-f]{64}$", resolved):
            fail("Dockerfile", f"base image `{resolved}` is not pinned by digest (docker/pin-base-images.sh)")
    if re.search(r"type=cache,target=/src/target", text):
        fail("Dockerfile", "each build stage needs its own target cache (`id=`)")
    for needle, why in [
        ('HEALTHCHECK', "no HEALTHCHECK"),
        ('"probe"', "the HEALTHCHECK must use `a2a-sidecar probe`"),
    ]:
        if needle not in final:
            fail("Dockerfile (last stage)", why)
    # The production binary: built in the `build` stage, without the `dev`
    # feature on every path (PGO=1 through bench/pgo.sh's `sidecar`, PGO=0 directly).
    build = re.search(r"^FROM\s+\S+\s+AS\s+build\n(.*?)(?=^FROM\s)", text, re.M | re.S | re.I)
    build = build.group(1) if build else ""
    builds = re.findall(r"cargo build[^\n]*", build)
    if not builds or any("-p proxy --no-default-features" not in b for b in builds):
        fail("Dockerfile (build stage)", f"every cargo build of the production binary must be `-p proxy --no-default-features`: {builds}")
    if "bench/pgo.sh build" in build:
        pgo = (ROOT / "bench" / "pgo.sh").read_text()
        pgo_builds = re.findall(r"^\s*cargo build[^\n]*-p proxy[^\n]*", pgo, re.M)
        if not pgo_builds or any("--no-default-features" not in b for b in pgo_builds):
            fail("bench/pgo.sh", f"its a2a-sidecar builds must be without the `dev` feature: {pgo_builds}")
    # Nothing the image build sets may change those flags or features behind the lines above.
    for name in ("RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "LLVM_PROFILE_FILE"):
        if re.search(rf"^(ARG|ENV)\s+{name}\b", text, re.M):
            fail("Dockerfile", f"{name} is set as ARG/ENV: it would change the production build's flags")
    # The training stage built and ran the bench (with the `dev` feature): only its profile may leave it.
    for copy in re.findall(r"^COPY\s+--from=pgo-profile\b[^\n]*", text, re.M):
        if copy.split()[2:] != ["/pgo/", "/pgo/"]:
            fail("Dockerfile", f"only the profile (/pgo/) may leave the pgo-profile stage: `{copy}`")
    print("ok   Dockerfile: numeric non-root USER, HEALTHCHECK probe, every production build without the dev feature"
          " (bench/pgo.sh's too), only the profile from the PGO stage, one target cache per stage, bases by digest")
    return uid_gid


def main():
    args = sys.argv[1:]
    options = {"--compose-schema-wheel": None, "--kustomize": str(ROOT / "target/kustomize/kustomize"),
               "--crds": str(ROOT / "target/kustomize/crds")}
    for option in options:
        if option in args:
            i = args.index(option)
            options[option] = args[i + 1] if i + 1 < len(args) else sys.exit(__doc__)
            del args[i : i + 2]
    if len(args) != 1:
        sys.exit(__doc__)
    binary = args[0]
    check_compose(binary, options["--compose-schema-wheel"])
    user = check_dockerfile()
    check_k8s(binary, options["--kustomize"], options["--crds"], user)
    check_spire()
    check_spire_compose()
    if failures:
        print("\n".join(["", "FAILED:"] + failures), file=sys.stderr)
        sys.exit(1)
    print("deployment files: all checks passed")


if __name__ == "__main__":
    main()
