#!/usr/bin/env python3
"""Checks the container files as far as a machine without a registry can.

1. compose.yaml: valid YAML, the services it promises, every file it mounts present, the router's
   config where the Python mvllm's `docker run -v ...:/app/servers.toml` puts it, and that config
   valid (`mvllm check-config --offline`).
2. Prometheus and Grafana provisioning: valid YAML, the data source pointing at the Prometheus
   service and default, the dashboard provider's path where compose mounts the shipped dashboard,
   the dashboard's data source variable a Prometheus one.
3. The Dockerfile's final stage, built `FROM scratch` with the release binary in place of the
   build stage (base images cannot be pulled here): its user, entrypoint, command, port,
   working directory, environment, HEALTHCHECK and file layout, read back with
   `podman image inspect` and `podman save`. Skipped (with a message) when podman is missing or
   cannot build at all on this machine.

    scripts/container-check.py --binary target/release/mvllm

Exit 0 when every check that could run passed, 1 otherwise.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def load_yaml(path):
    import yaml  # PyYAML

    with open(os.path.join(ROOT, path)) as f:
        return yaml.safe_load(f)


def compose_and_provisioning(binary):
    compose = load_yaml("compose.yaml")
    services = compose.get("services", {})
    check(
        {"vllm", "router", "traffic", "prometheus", "grafana"} <= set(services),
        "compose.yaml: services vllm, router, traffic, prometheus, grafana",
    )
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("./"):
                check(os.path.exists(os.path.join(ROOT, host)), f"compose.yaml: {name} mounts {host}, present")
    router = services.get("router", {})
    mounts = {v.split(":")[1]: v.split(":")[0] for v in router.get("volumes", [])}
    check("/app/servers.toml" in mounts, "compose.yaml: the router's config at /app/servers.toml")
    check("8888:8888" in router.get("ports", []), "compose.yaml: the router on port 8888")
    check(services.get("vllm", {}).get("build") == ".", "compose.yaml: the image is built from this repository")
    config = os.path.join(ROOT, mounts.get("/app/servers.toml", "./missing")[2:])
    out = subprocess.run([binary, "check-config", "--offline", "--config", config], capture_output=True, text=True)
    check(out.returncode == 0, f"{os.path.relpath(config, ROOT)}: valid ({out.stdout.strip()})")

    prometheus = load_yaml("deploy/compose/prometheus.yml")
    targets = [t for job in prometheus["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    check("router:8888" in targets, "prometheus.yml: scrapes router:8888")

    datasources = load_yaml("deploy/grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    check(
        any(d["type"] == "prometheus" and d["url"] == "http://prometheus:9090" and d.get("isDefault") for d in datasources),
        "Grafana: the default data source is the Prometheus service",
    )
    providers = load_yaml("deploy/grafana/provisioning/dashboards/mvllm.yaml")["providers"]
    grafana_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    dashboard_dir = providers[0]["options"]["path"]
    dashboards = [t for t in grafana_mounts if t.startswith(dashboard_dir + "/")]
    check(bool(dashboards), f"Grafana: the dashboard is mounted under the provider's path {dashboard_dir}")
    check(grafana_mounts.get("/etc/grafana/provisioning") == "./deploy/grafana/provisioning", "Grafana: provisioning mounted")
    with open(os.path.join(ROOT, "deploy/grafana/mvllm-dashboard.json")) as f:
        dashboard = json.load(f)
    variables = dashboard.get("templating", {}).get("list", [])
    check(
        any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in variables),
        "Grafana: the dashboard's data source variable is a Prometheus one",
    )


def helm_chart(binary):
    """Without helm here: the chart's YAML files load, every `.Values.x.y` a template reads is
    in values.yaml, the probes and mount are the router's, and the default config is valid."""
    chart_dir = "deploy/helm/mvllm"
    chart = load_yaml(f"{chart_dir}/Chart.yaml")
    check(chart.get("apiVersion") == "v2" and chart.get("name") == "mvllm", "Helm: Chart.yaml")
    values = load_yaml(f"{chart_dir}/values.yaml")
    templates = os.path.join(ROOT, chart_dir, "templates")
    text = ""
    for name in sorted(os.listdir(templates)):
        with open(os.path.join(templates, name)) as f:
            text += f.read()
    for ref in sorted(set(re.findall(r"\.Values((?:\.[A-Za-z_]+)+)", text))):
        present = True
        node = values
        for key in ref.strip(".").split("."):
            if not isinstance(node, dict) or key not in node:
                present = False
                break
            node = node[key]
        check(present, f"Helm: .Values{ref} is in values.yaml")
    check("path: /livez" in text and "path: /readyz" in text, "Helm: liveness /livez, readiness /readyz")
    check("subPath:" not in text, "Helm: the ConfigMap is mounted as a directory (updates reach it)")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(values["config"])
    out = subprocess.run([binary, "check-config", "--offline", "--config", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    check(out.returncode == 0, f"Helm: the default config is valid ({out.stdout.strip()})")


def final_stage():
    """The Dockerfile's last stage, FROM scratch, its binary copied from the build context."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    # Join continuation lines, then keep what follows the last FROM.
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    starts = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
    stage = lines[starts[-1]:]
    out = ["FROM scratch"]
    for line in stage[1:]:
        m = re.match(r"COPY --from=build (\S+) (\S+)", line)
        out.append(f"COPY {os.path.basename(m.group(1))} {m.group(2)}" if m else line)
    return "\n".join(out) + "\n"


def image(binary):
    if not shutil.which("podman"):
        print("skip the image: podman is not installed")
        return
    work = tempfile.mkdtemp(prefix="mvllm-image-")
    tag = "localhost/mvllm-check:latest"
    try:
        shutil.copy(binary, os.path.join(work, "mvllm"))
        with open(os.path.join(work, "Containerfile"), "w") as f:
            f.write(final_stage())
        build = subprocess.run(
            ["podman", "build", "--format", "docker", "-t", tag, "-f", "Containerfile", "."],
            cwd=work, capture_output=True, text=True,
        )
        if build.returncode != 0:
            probe = subprocess.run(
                ["podman", "build", "-t", "localhost/mvllm-probe", "-f", "-", work],
                input="FROM scratch\nCOPY Containerfile /x\n", capture_output=True, text=True,
            )
            if probe.returncode != 0:
                print(f"skip the image: podman cannot build here ({probe.stderr.strip()[-200:]})")
                return
            check(False, f"the Dockerfile's final stage builds: {build.stderr.strip()[-400:]}")
            return
        check(True, "the Dockerfile's final stage builds FROM scratch with the release binary")
        inspect_image(tag, binary, work)
    finally:
        subprocess.run(["podman", "rmi", "-f", tag, "localhost/mvllm-probe"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def inspect_image(tag, binary, work):
    try:
        info = json.loads(subprocess.run(["podman", "image", "inspect", tag], capture_output=True, text=True, check=True).stdout)[0]
        cfg = info.get("Config", {})
        check(cfg.get("User") == "65532:65532", f"runs as a non-root user ({cfg.get('User')})")
        check(cfg.get("Entrypoint") == ["/usr/local/bin/mvllm"], f"entrypoint mvllm ({cfg.get('Entrypoint')})")
        check(cfg.get("Cmd") == ["run"], f"command run ({cfg.get('Cmd')})")
        check("8888/tcp" in (cfg.get("ExposedPorts") or {}), "exposes 8888")
        check(cfg.get("WorkingDir") == "/app", f"working directory /app ({cfg.get('WorkingDir')})")
        env = dict(e.split("=", 1) for e in cfg.get("Env", []))
        check(env.get("MVLLM_CONFIG") == "/app/servers.toml", "config at /app/servers.toml")
        check(env.get("MVLLM_HOST") == "0.0.0.0", "listens on every interface")
        check(env.get("NO_COLOR") == "1", "logs without colour")
        health = (info.get("Healthcheck") or cfg.get("Healthcheck") or {}).get("Test", [])
        check(health == ["CMD", "/usr/local/bin/mvllm", "healthcheck"], f"HEALTHCHECK mvllm healthcheck ({health})")
        archive = os.path.join(work, "image.tar")
        subprocess.run(["podman", "save", "--format", "docker-archive", "-o", archive, tag], check=True, capture_output=True)
        files = {}
        with tarfile.open(archive) as outer:
            for member in outer.getmembers():
                if member.name.endswith("layer.tar") or member.name.endswith(".tar"):
                    if member.name == "image.tar":
                        continue
                    layer = tarfile.open(fileobj=outer.extractfile(member))
                    for f in layer.getmembers():
                        files[f.name.lstrip("./")] = f
        binary_entry = files.get("usr/local/bin/mvllm")
        check(binary_entry is not None and binary_entry.mode & 0o111 != 0, "/usr/local/bin/mvllm present and executable")
        if binary_entry is not None:
            check(binary_entry.size == os.path.getsize(binary), f"the image holds the release binary ({binary_entry.size} bytes)")
        version = subprocess.run([binary, "version"], capture_output=True, text=True).stdout.strip()
        check(version.startswith("mvllm "), f"the binary runs: {version}")
    except subprocess.CalledProcessError as e:
        print(f"skip the image's contents: podman failed here ({e})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/mvllm"))
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    try:
        import yaml  # noqa: F401
    except ImportError:
        print("skip compose and provisioning: PyYAML is not installed (pip install pyyaml)")
    else:
        compose_and_provisioning(binary)
        helm_chart(binary)
    image(binary)
    if failures:
        print(f"{len(failures)} container check(s) failed")
        return 1
    print("container checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
