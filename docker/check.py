#!/usr/bin/env python3
"""Static checks of the deployment files, for CI machines without Docker.

- docker/docker-compose.yml: parses; validates against the Compose
  specification's JSON schema (the copy shipped in the docker-compose 1.29.2
  wheel, passed with --compose-schema-wheel; the top-level `name`, newer than
  that schema, is checked separately); every service has an image;
  references (depends_on, network_mode: service:X, named volumes) resolve;
  bind-mounted files exist; `docker compose config` too when the plugin is
  installed.
- docker/k8s/*.yaml: Kubernetes 1.30's schemas, strict (`kubernetes-validate`).
- Every sidecar in the compose file and in docker/k8s/: its config, laid out as the
  container sees it (mounted files, environment), passes `a2a-sidecar check`.
- docker/spire/*.conf parse as HCL, agree on the trust domain and pass `spire-server/agent validate`
  (when tools/spire/build.sh has built them); the compose images are the SPIRE version go.mod pins;
  each compose sidecar stop_grace_period is above its shutdown_delay + drain_timeout.
- docker/Dockerfile: production stage non-root, without the `dev` feature,
  with a HEALTHCHECK that runs `a2a-sidecar probe`.

Usage: docker/check.py PATH-TO-a2a-sidecar [--compose-schema-wheel WHEEL]
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
# ConfigMaps the k8s manifests expect to be created from repository files.
EXTERNAL_CONFIGMAPS = {
    "budget-backend-policy": {"spiffe-rbac-policy.yaml": ROOT / "examples/reference-policy/spiffe-rbac-policy.yaml"},
}

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


def check_k8s_schema(manifests):
    """Kubernetes' own OpenAPI schemas (the `kubernetes-validate` package), strict: unknown fields fail."""
    tool = Path(sys.executable).parent / "kubernetes-validate"
    if not tool.exists():
        print("skip Kubernetes schema validation (kubernetes-validate is not installed beside this python)")
        return
    for path in manifests:
        run = subprocess.run([str(tool), "--strict", "-k", "1.30.0", str(path)], capture_output=True, text=True)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("ERROR")]
        if run.returncode != 0 or errors:
            fail(f"k8s/{path.name}", "\n".join(errors) or run.stderr)
        else:
            print(f"ok   k8s/{path.name}: Kubernetes 1.30 schemas (strict)")


def check_k8s(binary):
    manifests = sorted((DOCKER / "k8s").glob("*.yaml"))
    if not manifests:
        fail("docker/k8s", "no manifests")
    check_k8s_schema(manifests)
    for path in manifests:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d.get("kind") == "ConfigMap"}
        for d in docs:
            for key in ("apiVersion", "kind", "metadata"):
                if key not in d:
                    fail(f"{path.name}", f"a document without `{key}`")
            if d.get("kind") != "Deployment":
                continue
            pod = d["spec"]["template"]["spec"]
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                if not str(c.get("image", "")).startswith(SIDECAR_IMAGES):
                    continue
                where = f"{path.name} {d['metadata']['name']}/{c['name']}"
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe not in c:
                        fail(where, f"no {probe}")
                files = {}
                for m in c.get("volumeMounts", []):
                    volume = volumes.get(m["name"])
                    if volume is None:
                        fail(where, f"volumeMount `{m['name']}` has no volume")
                        continue
                    cm = (volume.get("configMap") or {}).get("name")
                    if cm in configmaps:
                        for key, text in configmaps[cm].items():
                            files[f"{m['mountPath']}/{key}"] = text
                    elif cm in EXTERNAL_CONFIGMAPS:
                        for key, source in EXTERNAL_CONFIGMAPS[cm].items():
                            files[f"{m['mountPath']}/{key}"] = source.read_text()
                    elif cm:
                        fail(where, f"ConfigMap `{cm}` is neither in the manifest nor known to come from a file")
                env = {e["name"]: e.get("value", stand_in(e["name"])) for e in c.get("env", [])}
                args = c.get("args", [])
                config = args[args.index("--config") + 1] if "--config" in args else "/etc/a2a-sidecar/config.yaml"
                sidecar_check(binary, where, files, env, config)


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
    spire_images = [i for i in images if i.startswith("ghcr.io/spiffe/spire-")]
    if not pinned or not spire_images or any(not i.endswith(":" + pinned.group(1)) for i in spire_images):
        fail("docker-compose.yml", f"SPIRE images {spire_images} are not the version tools/spire/go.mod pins")
    else:
        print(f"ok   docker-compose.yml: SPIRE images are {pinned.group(1)}, as tools/spire/go.mod pins")


def check_dockerfile():
    text = (DOCKER / "Dockerfile").read_text()
    final = text[text.rindex("\nFROM "):]
    user = re.findall(r"^USER\s+(\S+)", final, re.M)
    if not user or not re.fullmatch(r"[1-9][0-9]*:[0-9]+", user[-1]):
        fail("Dockerfile (last stage)", f"USER must be a numeric non-root uid:gid (Kubernetes' runAsNonRoot refuses names): {user}")
    else:
        uid, gid = (int(x) for x in user[-1].split(":"))
        for path in sorted((DOCKER / "k8s").glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                spec = ((doc or {}).get("spec") or {}).get("template", {}).get("spec")
                if not spec:
                    continue
                context = spec.get("securityContext") or {}
                got = (context.get("runAsUser"), context.get("runAsGroup"))
                if got != (uid, gid):
                    fail(path.name, f"pod runAsUser/runAsGroup {got} differ from the image's USER {uid}:{gid}")
                else:
                    print(f"ok   {path.name}: runs as {uid}:{gid}, the image's numeric USER")
    if re.search(r"type=cache,target=/src/target", text):
        fail("Dockerfile", "each build stage needs its own target cache (`id=`)")
    for needle, why in [
        ('HEALTHCHECK', "no HEALTHCHECK"),
        ('"probe"', "the HEALTHCHECK must use `a2a-sidecar probe`"),
    ]:
        if needle not in final:
            fail("Dockerfile (last stage)", why)
    if "--no-default-features" not in text:
        fail("Dockerfile", "the production binary must be built without the `dev` feature")
    print("ok   Dockerfile: numeric non-root USER, HEALTHCHECK probe, no dev feature, one target cache per stage")


def main():
    args = sys.argv[1:]
    schema_wheel = None
    if "--compose-schema-wheel" in args:
        i = args.index("--compose-schema-wheel")
        schema_wheel = args[i + 1] if i + 1 < len(args) else sys.exit(__doc__)
        del args[i : i + 2]
    if len(args) != 1:
        sys.exit(__doc__)
    binary = args[0]
    check_compose(binary, schema_wheel)
    check_k8s(binary)
    check_spire()
    check_dockerfile()
    if failures:
        print("\n".join(["", "FAILED:"] + failures), file=sys.stderr)
        sys.exit(1)
    print("deployment files: all checks passed")


if __name__ == "__main__":
    main()
