#!/usr/bin/env python3
"""Builds the Dockerfile's runtime image without a Docker engine and checks that it works.

No Docker engine runs on the CI machines and no container registry is reachable, so
`docker build` cannot run there. This script carries out the Dockerfile itself instead:

- the build stage (`FROM rust:1.95-slim-bookworm`) is run on the host, which is the same Debian
  release with the same Rust toolchain: the script checks both, and checks that the stage's
  command is the `cargo build --release --locked --bin causeway` it runs, followed by `strip`;
- the final stage's base, `debian:bookworm-slim`, is made with `debootstrap --variant=minbase
  bookworm` from Debian's archive (cached under ~/.cache/causeway-image); every instruction of the
  final stage is then interpreted in order: each RUN in a chroot of that tree, COPY --from=build,
  USER, ENV, WORKDIR, VOLUME, EXPOSE, ENTRYPOINT and CMD.

The image is then started the way a container runtime would: ENTRYPOINT + CMD, as the USER, with
the ENV, in the chroot (with /proc and /dev mounted). The only change is the listen port, so
that it cannot collide with anything on the host. The check places an order and an order that
must be compensated through the REST API and waits for both sagas to end, checks the process
runs as the non-root user and that its data sits in the volume, owned by that user, then stops
it with SIGTERM and requires a clean exit. It prints the image's size.

Needs root (debootstrap, chroot, mount). Usage: image_check.py [--keep DIR]

`--self-test` (no root, nothing built) checks that the real Dockerfile passes the checks made
before building and that ten breakages of it are each caught.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CAUSEWAY_IMAGE_CACHE", Path.home() / ".cache" / "causeway-image"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "causeway-target"))
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
BUILD_COMMAND = "cargo build --release --locked --bin causeway"


# The configuration debuerreotype puts in the official debian:*-slim images: APT keeps no caches
# or translations, dpkg installs no documentation, manual pages or locales.
SLIM_CONFIG = {
    "etc/apt/apt.conf.d/docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
        '/var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'),
    "etc/apt/apt.conf.d/docker-no-languages": 'Acquire::Languages "none";\n',
    "etc/apt/apt.conf.d/docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
    "etc/dpkg/dpkg.cfg.d/docker": (
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/locale/*\npath-include /usr/share/locale/locale.alias\n"),
}


class ImageError(Exception):
    pass


def parse(text):
    """The Dockerfile as a list of stages: {'base', 'name', 'instructions': [(op, args)]}."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append(current + raw)
        current = ""
    if current:
        lines.append(current)
    stages = []
    for line in lines:
        op, _, args = line.strip().partition(" ")
        op, args = op.upper(), args.strip()
        if op == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            if not m:
                raise ImageError(f"cannot read FROM {args!r}")
            stages.append({"base": m.group(1), "name": m.group(2), "instructions": []})
        elif not stages:
            raise ImageError(f"{op} before the first FROM")
        else:
            stages[-1]["instructions"].append((op, args))
    return stages


def env_pairs(args):
    """ENV a=b c=d, or the legacy ENV a b."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    out = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ImageError(f"cannot read ENV {args!r}")
        out[key] = value
    return out


def run(cmd, **kw):
    print("+", " ".join(map(str, cmd)) if isinstance(cmd, list) else cmd, flush=True)
    subprocess.run(cmd, check=True, **kw)


def check_build_stage(stage):
    """Checks that the host can stand in for the build stage and that its command is the one run."""
    m = re.fullmatch(r"rust:(\d+\.\d+)(?:\.\d+)?-slim-bookworm", stage["base"])
    if not m:
        raise ImageError(f"the build stage's base {stage['base']} is not one this check can stand in for")
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True, check=True).stdout
    if not rustc.startswith(f"rustc {m.group(1)}."):
        raise ImageError(f"the host has {rustc.strip()}, the build stage uses Rust {m.group(1)}")
    if not Path("/etc/debian_version").read_text().startswith("12."):
        raise ImageError("the host is not Debian 12 (bookworm), the build stage's release")
    runs = [args for op, args in stage["instructions"] if op == "RUN"]
    build = [r for r in runs if BUILD_COMMAND in r]
    if len(build) != 1:
        raise ImageError(f"the build stage must run `{BUILD_COMMAND}` once")
    steps = [s.strip() for s in re.sub(r"--mount=\S+", "", build[0]).split("&&")]
    expected = [BUILD_COMMAND, "strip target/release/causeway", "cp target/release/causeway /causeway"]
    if steps != expected:
        raise ImageError(f"the build stage's command is {steps}, this check runs {expected}")


def build_stage(stage):
    """Runs the build stage on the host after checking the host is the stage's base."""
    check_build_stage(stage)
    run(shlex.split(BUILD_COMMAND), cwd=ROOT, env=dict(os.environ, CARGO_TARGET_DIR=str(TARGET)))
    out = CACHE / "build" / "causeway"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(TARGET / "release" / "causeway", out)
    run(["strip", str(out)])
    return {"/causeway": out}


def base_rootfs(into):
    """Unpacks debian:bookworm-slim's tree into `into`, debootstrapping it once into the cache."""
    tarball = CACHE / "bookworm-minbase.tar"
    if not tarball.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            run(["debootstrap", "--variant=minbase", "bookworm", tmp, MIRROR], stdout=subprocess.DEVNULL)
            # What the slim image leaves out.
            for path in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                         "var/cache/apt", "var/lib/apt/lists"):
                shutil.rmtree(Path(tmp) / path, ignore_errors=True)
            (Path(tmp) / "var/lib/apt/lists/partial").mkdir(parents=True)
            (Path(tmp) / "var/cache/apt/archives/partial").mkdir(parents=True)
            for path, text in SLIM_CONFIG.items():
                (Path(tmp) / path).write_text(text)
            run(["tar", "-C", tmp, "-cf", f"{tarball}.part", "."])
        os.replace(f"{tarball}.part", tarball)
    run(["tar", "-C", str(into), "-xf", str(tarball)])
    into.chmod(0o755)
    shutil.copy2("/etc/resolv.conf", into / "etc" / "resolv.conf")


class Mounts:
    def __init__(self, root):
        self.root, self.done = root, []

    def __enter__(self):
        for kind, target in (("proc", "proc"), ("dev", "dev")):
            path = self.root / target
            path.mkdir(exist_ok=True)
            if kind == "proc":
                run(["mount", "-t", "proc", "proc", str(path)])
            else:
                run(["mount", "--rbind", "/dev", str(path)])
                run(["mount", "--make-rslave", str(path)])
            self.done.append(path)
        return self

    def __exit__(self, *exc):
        for path in reversed(self.done):
            subprocess.run(["umount", "-R", "-l", str(path)], check=False)


SUPPORTED = {"RUN", "COPY", "USER", "ENV", "WORKDIR", "VOLUME", "EXPOSE", "ENTRYPOINT", "CMD"}


def check_final_stage(stage, build_name):
    """Checks, before anything is built, that every instruction of the final stage is one this
    script carries out, that it copies only the build stage's binary, that its entrypoint and
    command are exec form (JSON) and that it runs as a user other than root."""
    if stage["base"] != "debian:bookworm-slim":
        raise ImageError(f"the final stage's base {stage['base']} is not one this check can make")
    user = "0"
    for op, args in stage["instructions"]:
        if op not in SUPPORTED:
            raise ImageError(f"this check does not carry out {op}")
        if op == "COPY":
            m = re.fullmatch(r"--from=(\S+)\s+(\S+)\s+(\S+)", args)
            if not m or m.group(1) != build_name or m.group(2) != "/causeway":
                raise ImageError(f"cannot carry out COPY {args!r}: only the build stage's /causeway")
        if op in ("ENTRYPOINT", "CMD"):
            try:
                value = json.loads(args)
            except json.JSONDecodeError:
                value = None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ImageError(f"{op} must be in exec form (a JSON list of strings): {args}")
        if op == "ENV":
            env_pairs(args)
        if op == "USER":
            user = args.split(":")[0]
    if user in ("0", "root"):
        raise ImageError("the image runs as root")


def check(text):
    """Every check that needs no build: the stages, the build command, the final instructions."""
    stages = parse(text)
    if len(stages) != 2:
        raise ImageError("the Dockerfile must have two stages: the build and the runtime image")
    check_build_stage(stages[0])
    check_final_stage(stages[1], stages[0]["name"])
    return stages


def self_test():
    """The real Dockerfile passes; each of these breakages is caught before anything is built."""
    text = (ROOT / "Dockerfile").read_text()
    check(text)
    breakages = [
        ("an instruction before FROM", lambda t: "RUN true\n" + t),
        ("a third stage", lambda t: t + "\nFROM debian:bookworm-slim\n"),
        ("another build command", lambda t: t.replace("--locked ", "")),
        ("another Rust version", lambda t: t.replace("rust:1.95-", "rust:1.80-")),
        ("another runtime base", lambda t: t.replace("FROM debian:bookworm-slim", "FROM alpine:3")),
        ("an instruction this check does not carry out", lambda t: t + "\nHEALTHCHECK CMD true\n"),
        ("root", lambda t: t.replace("USER 10001:10001", "USER root")),
        ("no USER", lambda t: re.sub(r"^USER .*$", "", t, flags=re.M)),
        ("a shell-form entrypoint", lambda t: re.sub(r"^ENTRYPOINT .*$", "ENTRYPOINT /usr/local/bin/causeway",
                                                     t, flags=re.M)),
        ("a copy of something else", lambda t: t.replace("COPY --from=build /causeway", "COPY --from=build /etc")),
    ]
    for what, breaking in breakages:
        broken = breaking(text)
        if broken == text:
            raise AssertionError(f"the breakage {what!r} did not change the Dockerfile")
        try:
            check(broken)
        except ImageError as e:
            print(f"caught {what}: {e}")
            continue
        raise AssertionError(f"the breakage {what!r} was not caught")
    print(f"image check self-test: OK ({len(breakages)} breakages caught)")


def final_stage(stage, artifacts, root):
    """Interprets the final stage's instructions into `root` (checked by `check_final_stage`
    first); returns the runtime config."""
    config = {"user": "0:0", "env": {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
              "workdir": "/", "entrypoint": [], "cmd": [], "volumes": [], "expose": []}
    base_rootfs(root)
    with Mounts(root):
        for op, args in stage["instructions"]:
            if op == "RUN":
                env = dict(config["env"], DEBIAN_FRONTEND="noninteractive")
                run(["chroot", str(root), "/bin/sh", "-c", f"cd {shlex.quote(config['workdir'])} && {args}"],
                    env=env)
            elif op == "COPY":
                _, source, dest = args.split()
                dest = root / dest.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(artifacts[source], dest)
            elif op == "USER":
                config["user"] = args
            elif op == "ENV":
                config["env"].update(env_pairs(args))
            elif op == "WORKDIR":
                config["workdir"] = args
                (root / args.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif op == "VOLUME":
                config["volumes"] += json.loads(args) if args.startswith("[") else args.split()
            elif op == "EXPOSE":
                config["expose"] += args.split()
            elif op == "ENTRYPOINT":
                config["entrypoint"] = json.loads(args)
            elif op == "CMD":
                config["cmd"] = json.loads(args)
    return config


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def wait_for(what, check, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            value = check()
            if value:
                return value
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise ImageError(f"timed out waiting for {what}")


def exercise(root, config):
    """Starts the image as a container runtime would and uses it."""
    user = config["user"]
    uid, _, gid = user.partition(":")
    port = free_port()
    env = dict(config["env"])
    listen = env.get("CAUSEWAY_LISTEN", "")
    if not listen.endswith(":8080") or "8080/tcp" not in config["expose"] and "8080" not in config["expose"]:
        raise ImageError("the image must listen on the port it exposes (8080)")
    env["CAUSEWAY_LISTEN"] = f"127.0.0.1:{port}"
    argv = config["entrypoint"] + config["cmd"]
    base = f"http://127.0.0.1:{port}"
    with Mounts(root):
        print("+ chroot --userspec", user, root, *argv, flush=True)
        proc = subprocess.Popen(["chroot", f"--userspec={uid}:{gid or uid}", str(root), *argv], env=env,
                                cwd="/")
        try:
            wait_for("/readyz", lambda: http("GET", base + "/readyz")[0] == 200)
            status = (Path("/proc") / str(proc.pid) / "status").read_text()
            # chroot execs the entrypoint, so the pid is the server's.
            uids = re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)
            if uids != uid:
                raise ImageError(f"the server runs as uid {uids}, the image says {uid}")
            code, body = http("POST", base + "/api/products/SKU-1/stock", {"quantity": 3})
            if code >= 300:
                raise ImageError(f"adding stock: {code} {body}")
            address = {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
            orders = {}
            for key, qty, want in (("image-ok", 2, "confirmed"), ("image-short", 9, "cancelled")):
                code, body = http("POST", base + "/api/orders", {
                    "customer_id": "image", "currency": "EUR", "shipping_address": address,
                    "items": [{"sku": "SKU-1", "quantity": qty, "unit_price_minor": 500}],
                }, {"idempotency-key": key})
                if code >= 300:
                    raise ImageError(f"placing an order: {code} {body}")
                orders[body["order_id"]] = want
            for order_id, want in orders.items():
                got = wait_for(f"order {order_id} to be {want}",
                               lambda: (lambda r: r[1]["status"] if r[0] == 200 and
                                        r[1]["status"] in ("confirmed", "cancelled") else None)(
                                   http("GET", f"{base}/api/orders/{order_id}")))
                if got != want:
                    raise ImageError(f"order {order_id} ended {got}, expected {want}")
                print(f"order {order_id}: {got}")
            data = root / env["CAUSEWAY_DATA_DIR"].lstrip("/")
            if env["CAUSEWAY_DATA_DIR"] not in config["volumes"]:
                raise ImageError("the data directory is not a VOLUME")
            files = [p for p in data.rglob("*") if p.is_file()]
            if not files:
                raise ImageError("nothing was written to the data volume")
            wrong = [p for p in files if p.stat().st_uid != int(uid)]
            if wrong:
                raise ImageError(f"{wrong[0]} is not owned by uid {uid}")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
            if code != 0:
                raise ImageError(f"the server exited with {code} after SIGTERM")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def main():
    keep = None
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return
    if sys.argv[1:2] == ["--keep"] and len(sys.argv) == 3:
        keep = Path(sys.argv[2])
    elif sys.argv[1:]:
        sys.exit(__doc__)
    if os.geteuid() != 0:
        sys.exit("image_check.py needs root (debootstrap, chroot, mount)")
    if not shutil.which("debootstrap"):
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", "debootstrap"])
    build, final = check((ROOT / "Dockerfile").read_text())
    artifacts = build_stage(build)
    work = Path(tempfile.mkdtemp(prefix="causeway-image-"))
    root = keep or work / "rootfs"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    try:
        config = final_stage(final, artifacts, root)
        size = subprocess.run(["du", "-sm", "--exclude=./proc", "--exclude=./dev", str(root)],
                              capture_output=True, text=True, check=True).stdout.split()[0]
        print(f"image: {size} MiB unpacked, user {config['user']}, entrypoint {config['entrypoint'] + config['cmd']}")
        exercise(root, config)
        print("image check: OK")
    finally:
        # Never delete through a mount that is still there (it would reach the host's /dev).
        mounted = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                   if line.split()[1].startswith(str(work))]
        if keep is None and not mounted:
            shutil.rmtree(work, ignore_errors=True)
        elif mounted:
            print(f"left {work} in place: {mounted} still mounted", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except (ImageError, subprocess.CalledProcessError) as e:
        sys.exit(f"image check failed: {e}")
