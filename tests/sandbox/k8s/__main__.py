"""Run the Kubernetes emulator: ``python -m tests.sandbox.k8s --state-dir D --platform-url URL``.

Writes ``D/ready.json`` = {"url", "pid", "kubeconfig", "ca_file", "admin_token"} once it
accepts connections (see docs/internals.md and tests/sandbox/k8s/README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path

from tests.sandbox._tls import ensure_certificates, server_context
from tests.sandbox.k8s.controller import Config, Controller
from tests.sandbox.k8s.rbac import User
from tests.sandbox.k8s.resources import lookup
from tests.sandbox.k8s.server import SYSTEM_NAMESPACES, App, EmulatorServer
from tests.sandbox.k8s.store import Store
from tests.sandbox.k8s.workload import Workload


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def kubeconfig_text(url: str, ca_file: Path, token: str, namespace: str = "demo", context: str = "xapi-sandbox") -> str:
    # JSON is valid YAML, and every client (kubectl, client-go, the Python client) reads it.
    # Another context name renames the cluster and user too, so two kubeconfigs merge cleanly
    # (KUBECONFIG=a:b): kubectl merges entries by name.
    user = "sandbox-admin" if context == "xapi-sandbox" else f"{context}-admin"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": context, "cluster": {"server": url, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {
                "name": context,
                "context": {"cluster": context, "user": user, "namespace": namespace},
            }
        ],
        "current-context": context,
    }
    return json.dumps(config, indent=2) + "\n"


def _static_tokens(path: Path | None) -> dict[str, User]:
    """A token file in kube-apiserver's CSV form: token,user[,uid[,"group1,group2"]]."""
    tokens: dict[str, User] = {}
    if path is None:
        return tokens
    import csv

    with path.open() as handle:
        for row in csv.reader(handle):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise SystemExit(f"{path}: each line needs at least token,user")
            groups = tuple(g.strip() for g in row[3].split(",")) if len(row) > 3 and row[3] else ()
            tokens[row[0].strip()] = User(row[1].strip(), ("system:authenticated", *groups))
    return tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sandbox.k8s", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--platform-url", required=True, help="base URL of the platform API sandbox the pods call")
    parser.add_argument("--platform-ca", help="CA file for an https platform URL")
    parser.add_argument("--admin-token-file", type=Path, help="read the admin token from here (created if missing)")
    parser.add_argument("--token-file", type=Path, help="extra bearer tokens, CSV lines token,user[,uid[,groups]]")
    parser.add_argument("--namespace", default="demo", help="default namespace of the kubeconfig")
    parser.add_argument(
        "--context", default="xapi-sandbox", help="kubeconfig context and cluster name (default xapi-sandbox)"
    )
    for key, value in Config().as_dict().items():
        if key == "nodes":
            parser.add_argument("--nodes", type=int, default=value, help=f"simulated nodes (default {value})")
            continue
        parser.add_argument(f"--{key.replace('_', '-')}", type=float, default=value, help=f"seconds (default {value})")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "ready.json").unlink(missing_ok=True)

    if args.admin_token_file and args.admin_token_file.exists():
        admin_token = args.admin_token_file.read_text().strip()
    else:
        admin_token = "k8sadm_" + secrets.token_urlsafe(32)
        if args.admin_token_file:
            _write_private(args.admin_token_file, admin_token + "\n")

    tls = ensure_certificates(state_dir, common_name="xapi k8s sandbox")
    store = Store()
    namespaces = lookup("", "v1", "namespaces")
    assert namespaces is not None
    for name in SYSTEM_NAMESPACES:
        store.create(namespaces, "", {"metadata": {"name": name}})
    config = Config(**{key: getattr(args, key) for key in Config().as_dict()})
    controller = Controller(store, config)
    app = App(store, admin_token, _static_tokens(args.token_file))
    app.controller = controller
    workload = Workload(controller, args.platform_url, args.platform_ca)
    server = EmulatorServer((args.host, args.port), app, server_context(tls))
    host, port = server.server_address[:2]
    url = f"https://{host}:{port}"

    kubeconfig = state_dir / "kubeconfig"
    _write_private(kubeconfig, kubeconfig_text(url, tls.ca_file, admin_token, args.namespace, args.context))

    controller.start()
    workload.start()

    def shutdown(_signum: int, _frame: object) -> None:
        server.stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    ready = {
        "url": url,
        "pid": os.getpid(),
        "kubeconfig": str(kubeconfig),
        "ca_file": str(tls.ca_file),
        "admin_token": admin_token,
    }
    _write_private(state_dir / "ready.json", json.dumps(ready) + "\n")
    logging.getLogger("k8s-emulator").info("serving %s (kubeconfig %s)", url, kubeconfig)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        controller.stop()
        workload.stop()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
