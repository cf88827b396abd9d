"""Container health probe (stdlib only: the slim image has no curl).

`python healthcheck.py [/livez|/readyz|/health]` GETs the worker's health server on this
container's port and exits 0 on 200, 1 otherwise, with the reason on stderr. The port follows
the worker's rule (wa_worker.process.startup.health_port): HEALTH_PORT plus the Bytewax process
id, except in a Kubernetes pod, where every pod serves on HEALTH_PORT.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 3.0


def probe_port(env: dict[str, str]) -> int:
    base = int(env.get("HEALTH_PORT") or "4900")
    if not base or "BYTEWAX_POD_NAME" in env:
        return base
    return base + int(env.get("BYTEWAX_PROCESS_ID") or "0")


def check(path: str, env: dict[str, str]) -> tuple[bool, str]:
    try:
        port = probe_port(env)
    except ValueError as exc:
        return False, f"bad HEALTH_PORT or BYTEWAX_PROCESS_ID ({exc})"
    if not port:
        return True, "HEALTH_PORT=0: the health server is off, nothing to probe"
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except OSError as exc:  # refused, timed out, unreachable
        return False, f"{url}: {exc}"
    return status == 200, f"{url}: HTTP {status}"


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/livez"
    if not path.startswith("/"):
        print(f"healthcheck: path must start with / (got {path!r})", file=sys.stderr)
        return 2
    healthy, reason = check(path, dict(os.environ))
    print(f"healthcheck: {reason}", file=sys.stderr if not healthy else sys.stdout)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
