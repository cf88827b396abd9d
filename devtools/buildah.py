"""Daemonless image builds with Debian's buildah and mmdebstrap (no Docker engine, no registry).

Storage is vfs in a folder of ours (`.stack/image/storage`): overlay does not work here, and the
folder is kept between runs as a cache. deploy/README.md, "Built and run without Docker".
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SUITE = "bookworm"
# python3-venv for the Dockerfile's `python3 -m venv`, passwd for its useradd.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
# What the official python image sets and a rootfs from scratch lacks.
BASE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
)
# The host's CA bundle replaces the base's: pip in the build then trusts what the host trusts
# (here, a TLS-intercepting egress proxy). Only this local test base gets it, not the Dockerfile.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def ensure_tools() -> None:
    """Install buildah and mmdebstrap from Debian's packages when missing (a fresh machine)."""
    need = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if not need:
        return
    say(f"installing {' '.join(need)} from Debian's packages")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *need], check=True, env=env)


class Buildah:
    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.prefix = [
            "buildah",
            "--root",
            str(cache / "storage"),
            "--runroot",
            str(cache / "run"),
            "--storage-driver",
            "vfs",
        ]

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self.prefix, *args], check=False, text=True, capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"buildah {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
        return done.stdout.strip()

    def argv(self, *args: str) -> list[str]:
        return [*self.prefix, *args]

    def has_image(self, name: str) -> bool:
        done = subprocess.run(
            [*self.prefix, "inspect", "--type", "image", name], capture_output=True, check=False
        )
        return done.returncode == 0

    def image_config(self, name: str) -> dict[str, Any]:
        """The Docker-format config (Entrypoint, Env, User, Healthcheck, Volumes, WorkingDir)."""
        inspected = json.loads(self("inspect", "--type", "image", name))
        return dict(inspected["Docker"]["config"])


def base_tag() -> str:
    """Named after what is in it, so a changed package list or CA bundle makes a new base."""
    digest = hashlib.sha256(" ".join((SUITE, *BASE_PACKAGES, *BASE_ENV)).encode())
    if HOST_CA_BUNDLE.exists():
        digest.update(HOST_CA_BUNDLE.read_bytes())
    return f"localhost/wa-worker-base:{SUITE}-{digest.hexdigest()[:10]}"


def ensure_base(buildah: Buildah) -> tuple[str, str]:
    """The local base image, made when missing: (tag, how it was found)."""
    tag = base_tag()
    if buildah.has_image(tag):
        return tag, "cached"
    started = time.monotonic()
    digest = hashlib.sha256(" ".join((SUITE, *BASE_PACKAGES)).encode()).hexdigest()[:10]
    tarball = buildah.cache / f"{SUITE}-{digest}.tar"
    if not tarball.exists():
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                "--format=tar",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(partial),
            ],
            check=True,
        )
        partial.rename(tarball)
    container = buildah("from", "scratch")
    try:
        buildah("add", container, str(tarball), "/")
        if HOST_CA_BUNDLE.exists():
            buildah("copy", container, str(HOST_CA_BUNDLE), str(HOST_CA_BUNDLE))
        for env in BASE_ENV:
            buildah("config", "--env", env, container)
        buildah("config", "--cmd", "python3", container)
        buildah("commit", "--quiet", container, tag)
    finally:
        buildah("rm", container)
    return tag, f"built in {time.monotonic() - started:.0f}s"


def say(message: str) -> None:
    print(f"image-test: {message}", file=sys.stderr, flush=True)
