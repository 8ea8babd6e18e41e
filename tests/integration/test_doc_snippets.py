"""Every snippet runs: each command, playbook and inventory of README.md, docs/role.md and the user
guide (docs/docsite/rst/*.rst) is run as written, against the sandbox, from the collection installed
from its tarball outside the repository, without the repository's ansible.cfg.

The convention (enforced by ``test_every_block_is_run_or_marked``)
-------------------------------------------------------------------
A *block* is a fenced code block of a Markdown file (any language, or none) or a
``.. code-block::`` directive of an rst file. Every block is one of:

- **quoted text**: language ``text`` (and rst ``::`` literal blocks): output, messages, a crontab
  line shown as text. Never run; a ``$ `` prompt in one is an error (a command hidden as text).
- **marked not run**, in the doc itself, right before the block (blank lines allowed):
  Markdown ``<!-- snippet: not run (reason) -->``, rst ``.. snippet: not run (reason)``.
- **run**, everything else, by what it is:

  - a command block (``console``, ``shell``/``bash``/``sh``, or a Markdown block without language):
    ``console`` lines starting with ``$ `` (the rest is output), otherwise every line that is not a
    comment. All lines of a doc run in one ``bash`` session per block, in document order, from the
    doc's working directory; what a block exports (``export``, ``. file``) and its ``cd`` carry
    over to the doc's next block. One line can be left out with a marker before the block:
    ``<!-- snippet: line "PREFIX" not run (reason) -->`` / ``.. snippet: line "PREFIX" not run
    (reason)``, where PREFIX starts exactly one command line of the block.
  - a YAML inventory (a mapping of groups with ``hosts``): its first line must be a comment naming
    its file (``# inventory.yml``); it is written there, in the doc's working directory, before
    any block of the doc runs, and a command of the doc must use it (``-i`` the file or its
    directory). Each service it names is seeded into the sandbox (``seed_service``: the Secret,
    its system user and every workload listed; see ``EXPIRES_IN_DAYS``).
  - a YAML playbook (a list of plays with ``hosts``): written to a file and run with
    ``ansible-playbook FILE``, plus ``-i`` the doc's inventory when its hosts are not localhost.
  - a YAML task list (a list without ``hosts``): run as the tasks of a ``hosts: localhost,
    gather_facts: false`` play, with its variables from ``PLACEHOLDER_VARS``.

Every block that runs is a test case (``doc:line``); a failure shows the snippet, the output's
tail and what to fix. Run blocks depend on the earlier blocks of their doc (files, exports, the
sandbox state they leave), so run this file as a whole.

Where they run
--------------
- README.md's "Quick start" section, the user guide's "Try it against the sandbox" and the AWX
  page's "The execution environment" (``REPOSITORY_SECTIONS``) run from a throwaway copy of the
  repository checkout (tracked and untracked files, ``.venv`` linked), as a clone would: ``make
  demo`` and the lines after it (``make test`` is left out: it runs this file), ``ansible-galaxy
  collection build`` (``ansible-builder build`` is left out: it needs podman or docker). ``PATH``
  has ``.venv/bin`` only where the reader is meant to have Ansible's tools (the EE's build).
  The environment hands make ``SANDBOX_ARGS=--platform-port 0 --k8s-port 0`` (free ports instead of
  the fixed defaults, so a developer's own sandbox is never hit) and ``XAPI_SANDBOX_OWNER_PID``
  (the sandbox stops with this test run).
- Everything else runs from a temporary working directory per doc, as a fresh user whose ``HOME``
  holds the collection installed from the built tarball next to kubernetes.core in
  ``~/.ansible/collections`` (Ansible's default path: no ``ANSIBLE_COLLECTIONS_PATH``), with no
  ``ANSIBLE_*`` setting and no ansible.cfg of the repository, ``ansible-playbook`` of ``.venv`` on
  ``PATH``, and the sandbox's ``XAPI_URL``, ``XAPI_ADMIN_TOKEN``, ``XAPI_CA_PATH`` (the sandbox
  serves TLS) and ``KUBECONFIG`` exported, as README.md's table asks the reader to (the docs' own
  ``export`` lines run too, placeholders filled).
  The docs share one sandbox; a doc whose inventories name other services than the previous doc's
  gets its namespaces deleted and seeded afresh.

A snippet fails when a command exits non-zero, and when any token the test knows of (the admin
token, every token of the seeded Secrets and companion Secrets, every user it created) appears in
its output, plain or base64; the output of such a run is not shown.

Placeholders
------------
Only these are filled in (``PLACEHOLDERS``, ``PLACEHOLDER_VARS``): of the ``export`` lines, the
example platform URL https://api.example.com, the admin token ``XAPI_ADMIN_TOKEN=...``, the CA
/etc/pki/platform-ca.pem and the kubeconfig ~/.kube/config (the sandbox's); path/to/kubernetes/core
(the kubernetes.core the repository bootstraps); the tarball name (the built tarball is copied into
the working directory); the example system user id ``su_0123456789abcdef01234567`` (the id of the Secret
payments/payments-api-token at that point); the example system user name
``demo.payments-api-token-20261201020000`` (created in the sandbox); the second cluster's kubeconfig
``/etc/xapi/clusters/eu-west.kubeconfig`` (a copy of the sandbox's) and the audit log directory
``/var/log/xapi/`` (moved under the working directory); the variables ``credential_ids`` and
``billing_credential_id`` of task lists. Namespaces, Secrets and workloads come from the inventories.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Sandbox, _start_sandbox, _stop_sandbox
from tests.sandbox.seed import Cluster, seed_service, wait_available, workload_manifest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
KUBERNETES_CORE = REPO / ".collections" / "ansible_collections" / "kubernetes" / "core"
VERSION = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
TARBALL_NAME = f"xapi-system_auth-{VERSION}.tar.gz"

# In the order they run: a doc's blocks depend on the earlier blocks of the same doc only, but
# the docs without an inventory of their own use the world the one before them left.
DOCS = [
    "README.md",
    "docs/role.md",
    "docs/docsite/rst/guide_quickstart.rst",
    "docs/docsite/rst/guide_one_service.rst",
    "docs/docsite/rst/guide_fleet.rst",
    "docs/docsite/rst/guide_check_mode.rst",
    "docs/docsite/rst/guide_failure_rollback.rst",
    "docs/docsite/rst/guide_secret_state.rst",
    "docs/docsite/rst/guide_compatibility.rst",
    "docs/docsite/rst/guide_awx.rst",
    "docs/docsite/rst/guide_development.rst",
    "docs/docsite/rst/guide_troubleshooting.rst",
]
# Pages that run commands on `-i inventory/` without showing one use the fleet page's (they say so).
INVENTORY_FROM = {
    "docs/docsite/rst/guide_check_mode.rst": "docs/docsite/rst/guide_fleet.rst",
    "docs/docsite/rst/guide_failure_rollback.rst": "docs/docsite/rst/guide_fleet.rst",
    "docs/docsite/rst/guide_secret_state.rst": "docs/docsite/rst/guide_fleet.rst",
}
# Sections run from a copy of the repository checkout instead of an installed collection.
# The value says whether the reader has Ansible's tools on PATH: a clone's reader has only what
# make puts into .venv and says .venv/bin/ where a tool of it is meant; the one who builds the
# execution environment has ansible-galaxy and ansible-builder installed (here: .venv's).
REPOSITORY_SECTIONS = {("README.md", "Quick start"): False,
                       ("docs/docsite/rst/guide_quickstart.rst", "Try it against the sandbox"): False,
                       ("docs/docsite/rst/guide_awx.rst", "The execution environment"): True}
# Days left on the seeded credentials: due (threshold 7, or the fleet's 10) where the docs rotate,
# weeks elsewhere (a due `reload` service would wait its 300 s reload interval).
EXPIRES_IN_DAYS = {"payments-api-token": 5}
DEFAULT_EXPIRES_IN_DAYS = 90
EXAMPLE_USER_NAME = "demo.payments-api-token-20261201020000"
EXAMPLE_USER_ID = "su_0123456789abcdef01234567"
COMMAND_LANGUAGES = {"", "console", "shell", "bash", "sh"}
YAML_LANGUAGES = {"yaml", "yaml+jinja", "yml"}
TEXT_LANGUAGES = {"text"}
LINE_TIMEOUT = 300
# Quicker pods than the emulator's defaults, on the seeded workloads' pod templates (timing only).
FAST_PODS = {"sandbox.xapi.io/pod-start-delay": "0.2", "sandbox.xapi.io/pod-ready-delay": "0.2",
             "sandbox.xapi.io/termination-grace": "1", "sandbox.xapi.io/request-interval": "0.1"}


# --- extraction ------------------------------------------------------------------------------------

MD_FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
MD_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$")
MD_MARK = re.compile(r"^\s*<!--\s*snippet:\s*(.*?)\s*-->\s*$")
RST_BLOCK = re.compile(r"^(\s*)\.\. code-block::\s*(\S*)\s*$")
RST_MARK = re.compile(r"^\s*\.\. snippet:\s*(.*?)\s*$")
NOT_RUN = re.compile(r"^not run \((.+)\)$")
LINE_NOT_RUN = re.compile(r'^line "(.+?)" not run \((.+)\)$')


@dataclass
class Block:
    doc: str
    line: int  # 1-based line of the fence / directive
    language: str
    text: str
    section: str
    marks: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def not_run_reason(self) -> str | None:
        for mark in self.marks:
            found = NOT_RUN.match(mark)
            if found:
                return found.group(1)
        return None

    @property
    def skipped_lines(self) -> dict[str, str]:
        return {m.group(1): m.group(2) for m in map(LINE_NOT_RUN.match, self.marks) if m}

    def commands(self) -> list[str]:
        if self.language == "console":
            return [line[2:] for line in self.text.splitlines() if line.startswith("$ ")]
        return [line for line in self.text.splitlines() if line.strip() and not line.lstrip().startswith("#")]

    def runnable_commands(self) -> list[str]:
        skipped = self.skipped_lines
        return [c for c in self.commands() if not any(c.startswith(p) for p in skipped)]

    def yaml_kind(self) -> str:
        try:
            data = yaml.safe_load(self.text)
        except yaml.YAMLError:
            return "invalid"
        if isinstance(data, dict) and data and all(isinstance(g, dict) and "hosts" in g for g in data.values()):
            return "inventory"
        if isinstance(data, list) and data and all(isinstance(p, dict) for p in data):
            return "playbook" if all("hosts" in p for p in data) else (
                "tasks" if not any("hosts" in p for p in data) else "mixed")
        return "other"

    @property
    def kind(self) -> str:
        """text, not run, commands, inventory, playbook, tasks, or what cannot be run (unknown/...)."""
        if self.language in TEXT_LANGUAGES:
            return "text"
        if self.not_run_reason:
            return "not run"
        if self.language in COMMAND_LANGUAGES:
            return "commands"
        if self.language in YAML_LANGUAGES:
            return self.yaml_kind()
        return f"unknown language {self.language!r}"

    @property
    def file_name(self) -> str | None:
        first = self.text.splitlines()[0] if self.text else ""
        found = re.match(r"^#\s*(\S+\.ya?ml)\s*$", first)
        return found.group(1) if found else None

    @property
    def context(self) -> str:
        return "repository" if (self.doc, self.section) in REPOSITORY_SECTIONS else "installed"


def _dedent(lines: list[str]) -> str:
    body = list(lines)
    while body and not body[-1].strip():
        body.pop()
    while body and not body[0].strip():
        body.pop(0)
    indent = min((len(line) - len(line.lstrip()) for line in body if line.strip()), default=0)
    return "\n".join(line[indent:] for line in body) + "\n"


def _take_marks(pending: list[tuple[int, str]]) -> list[str]:
    marks = [text for _, text in pending]
    pending.clear()
    return marks


def extract(doc: str) -> tuple[list[Block], list[tuple[int, str]]]:
    """The blocks of one doc, and the markers that precede no block (orphans)."""
    lines = (REPO / doc).read_text().splitlines()
    blocks: list[Block] = []
    orphans: list[tuple[int, str]] = []
    pending: list[tuple[int, str]] = []
    section = ""
    i = 0
    markdown = doc.endswith(".md")
    while i < len(lines):
        line = lines[i]
        mark = (MD_MARK if markdown else RST_MARK).match(line)
        if mark:
            pending.append((i + 1, mark.group(1)))
            i += 1
            continue
        if markdown:
            fence = MD_FENCE.match(line)
            heading = MD_HEADING.match(line)
            if heading:
                section = heading.group(1)
            if fence:
                indent, language = fence.groups()
                end = i + 1
                while end < len(lines) and lines[end].strip() != "```":
                    end += 1
                blocks.append(Block(doc, i + 1, language.lower(), _dedent(lines[i + 1:end]), section,
                                    _take_marks(pending)))
                i = end + 1
                continue
        else:
            directive = RST_BLOCK.match(line)
            if i + 1 < len(lines) and re.fullmatch(r"[=\-~^]{3,}", lines[i + 1].strip()) and line.strip():
                section = line.strip()
            if directive:
                indent = len(directive.group(1))
                end = i + 1
                while end < len(lines) and re.match(r"^\s+:[\w-]+:", lines[end]):  # options
                    end += 1
                start = end
                while end < len(lines) and (not lines[end].strip() or
                                            len(lines[end]) - len(lines[end].lstrip()) > indent):
                    end += 1
                blocks.append(Block(doc, i + 1, directive.group(2).lower(), _dedent(lines[start:end]), section,
                                    _take_marks(pending)))
                i = end
                continue
        if line.strip() and pending:
            orphans.extend(pending)
            pending.clear()
        i += 1
    orphans.extend(pending)
    return blocks, orphans


ALL: dict[str, tuple[list[Block], list[tuple[int, str]]]] = {doc: extract(doc) for doc in DOCS}
BLOCKS = [block for doc in DOCS for block in ALL[doc][0]]
RUN = [b for b in BLOCKS if b.kind in ("commands", "inventory", "playbook", "tasks")]
EXECUTED = [b for b in RUN if b.kind != "inventory" and (b.kind != "commands" or b.runnable_commands())]


def _inventories(doc: str) -> list[Block]:
    docs = [doc] + ([INVENTORY_FROM[doc]] if doc in INVENTORY_FROM else [])
    return [b for d in docs for b in ALL[d][0] if b.kind == "inventory"]


def _uses(commands: list[str], path: str) -> bool:
    for command in commands:
        for target in re.findall(r"(?:^|\s)-i\s+(\S+)", command):
            target = target.rstrip("/")
            if path == target or path.startswith(target + "/"):
                return True
    return False


# --- the accounting ----------------------------------------------------------------------------------

def test_every_doc_is_covered() -> None:
    guide = {str(page.relative_to(REPO)) for page in (REPO / "docs/docsite/rst").glob("*.rst")}
    pages = {"README.md", "docs/role.md"} | guide
    assert set(DOCS) == pages, f"add the new pages to DOCS, drop the gone ones: {sorted(set(DOCS) ^ pages)}"


def test_every_block_is_run_or_marked() -> None:
    problems = []
    for doc in DOCS:
        blocks, orphans = ALL[doc]
        problems += [f"{doc}:{line}: marker {text!r} precedes no code block" for line, text in orphans]
        for block in blocks:
            for mark in block.marks:
                if not (NOT_RUN.match(mark) or LINE_NOT_RUN.match(mark)):
                    problems.append(f"{block.id}: marker {mark!r} is neither 'not run (reason)' nor "
                                    "'line \"PREFIX\" not run (reason)'")
            kind = block.kind
            if kind == "text":
                if any(line.startswith("$ ") for line in block.text.splitlines()):
                    problems.append(f"{block.id}: a text block holds a '$ ' command; make it console")
            elif kind not in ("not run", "commands", "inventory", "playbook", "tasks"):
                problems.append(f"{block.id}: a {block.language or 'plain'} block that is {kind}: it cannot be "
                                "run; mark it not run (reason) before the block, or make it text")
            if block.skipped_lines and kind != "commands":
                problems.append(f"{block.id}: 'line ... not run' markers apply to command blocks only")
            for prefix in block.skipped_lines:
                matching = [c for c in block.commands() if c.startswith(prefix)]
                if len(matching) != 1:
                    problems.append(f"{block.id}: marker line {prefix!r} matches {len(matching)} command lines")
            if kind == "inventory":
                if not block.file_name:
                    problems.append(f"{block.id}: an inventory must name its file on its first line "
                                    "(# inventory.yml)")
                else:
                    users = [d for d in DOCS if d == doc or INVENTORY_FROM.get(d) == doc]
                    commands = [c for d in users for b in ALL[d][0] if b.kind == "commands"
                                for c in b.runnable_commands()]
                    if not _uses(commands, block.file_name):
                        problems.append(f"{block.id}: no command of the doc uses inventory {block.file_name}")
    assert not problems, "\n".join(problems)


def test_placeholders_are_listed_in_the_docstring() -> None:
    for name in (*PLACEHOLDERS, *PLACEHOLDER_VARS, EXAMPLE_USER_ID, EXAMPLE_USER_NAME):
        assert name in (__doc__ or ""), f"placeholder {name} is not described at the top of this file"


# --- running -----------------------------------------------------------------------------------------

# Literal text of the snippets replaced before they run: what the doc marks as the reader's own.
PLACEHOLDERS = {
    "https://api.example.com": lambda s: s.sandbox.url,
    "XAPI_ADMIN_TOKEN=...": lambda s: "XAPI_ADMIN_TOKEN=" + shlex.quote(s.sandbox.admin_token),
    "/etc/pki/platform-ca.pem": lambda s: s.sandbox.ca_path or "",
    "~/.kube/config": lambda s: s.sandbox.kubeconfig or "",
    "path/to/kubernetes/core": lambda s: str(KUBERNETES_CORE),
    EXAMPLE_USER_ID: lambda s: s.secret_id("payments", "payments-api-token"),
    "/etc/xapi/clusters/eu-west.kubeconfig": lambda s: str(s.workdir / "eu-west.kubeconfig"),
    "/var/log/xapi/": lambda s: str(s.workdir / "var" / "log" / "xapi") + "/",
}
PLACEHOLDER_VARS = {
    "credential_ids": lambda s: s.all_secret_ids(),
    "billing_credential_id": lambda s: s.create_user("billing-api"),
}


def _path(with_venv: bool) -> str:
    """PATH without this repository's .venv/bin (however the test was started: make puts it there),
    or with it first."""
    entries = [e for e in os.environ.get("PATH", "").split(os.pathsep)
               if e and Path(e).resolve() != VENV_BIN.resolve()]
    return os.pathsep.join(([str(VENV_BIN)] if with_venv else []) + entries)


def _base_env() -> dict[str, str]:
    """The environment of a fresh shell: nothing of Ansible's, the platform's, Kubernetes' or an outer make's."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("ANSIBLE_", "XAPI_", "K8S_", "MAKE")) and k not in ("KUBECONFIG", "MFLAGS")}


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build")
    result = subprocess.run([str(VENV_BIN / "ansible-galaxy"), "collection", "build", "--force", "--output-path",
                             str(out), str(REPO)], cwd=out, env=_base_env(), capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return out / TARBALL_NAME


@pytest.fixture(scope="module")
def home(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh user's HOME, with the tarball and kubernetes.core installed where Ansible looks by default."""
    home = tmp_path_factory.mktemp("home")
    env = _base_env() | {"HOME": str(home)}
    for source in (KUBERNETES_CORE, tarball):
        result = subprocess.run([str(VENV_BIN / "ansible-galaxy"), "collection", "install", "--offline", "-p",
                                 str(home / ".ansible" / "collections"), str(source)], cwd=home, env=env,
                                capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    return home


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("snippet-sandbox")
    running = _start_sandbox(directory, "--tls", "--no-seed")
    yield running
    _stop_sandbox(directory)


def _copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.startswith((".venv/", ".collections/", ".sandbox/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / ".venv").symlink_to(REPO / ".venv")
    collections = dest / ".collections" / "ansible_collections"
    for namespace in ("xapi", "kubernetes"):
        (collections / namespace).mkdir(parents=True)
    (collections / "kubernetes" / "core").symlink_to(KUBERNETES_CORE.resolve())
    (collections / "xapi" / "system_auth").symlink_to(dest)
    # The copy's .venv is the repository's, already bootstrapped: keep make from bootstrapping it
    # again because the copied inputs of its stamp carry this checkout's modification times.
    stamp = (REPO / ".venv" / ".bootstrapped").stat().st_mtime
    for rel in ("requirements.txt", "requirements-test.txt", "constraints.txt", "hack/bootstrap.sh"):
        os.utime(dest / rel, (stamp - 1, stamp - 1))


class Session:
    """The state the snippets share: the sandbox, each doc's working directory and environment."""

    def __init__(self, sandbox: Sandbox, home: Path, tarball: Path, root: Path) -> None:
        self.sandbox, self.home, self.tarball, self.root = sandbox, home, tarball, root
        self.cluster = Cluster(sandbox.kubeconfig)
        self.doc: str | None = None
        self.workdir = root
        self.env: dict[str, str] = {}
        self.cwd = root
        self.world: tuple[str, ...] = ()
        self.namespaces: set[str] = set()
        self.checkout: Path | None = None
        self.repo_env: dict[str, str] = {}
        self.repo_env_start: dict[str, str] = {}
        self.repo_cwd = root
        self.counter = 0
        self.tokens: set[str] = {sandbox.admin_token}

    # placeholders' values
    def secret_id(self, namespace: str, secret: str) -> str:
        status, body = self.cluster.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{secret}")
        assert status == 200, f"the example id stands for Secret {namespace}/{secret}'s id, which is not there"
        return base64.b64decode(body["data"]["id"]).decode()

    def all_secret_ids(self) -> list[str]:
        ids = []
        for block in _inventories(self.doc or ""):
            for host in _hosts(block):
                ids.append(self.secret_id(host["credential_rotation_namespace"],
                                          host["credential_rotation_secret_name"]))
        return ids

    def create_user(self, name: str) -> str:
        self.counter += 1
        answer = self.sandbox.api("POST", "/api/v1/system-users", json={
            "name": f"{name}-{self.counter}", "description": "doc snippet", "expires_in_days": 30})
        assert answer.status_code == 201, answer.status_code
        self.tokens.add(answer.json()["data"]["token"])
        return answer.json()["data"]["id"]

    def known_tokens(self) -> set[str]:
        """Every token the snippets could have seen: the admin's, the seeded and rotated ones, the created."""
        for namespace in self.namespaces:
            status, body = self.cluster.request("GET", f"/api/v1/namespaces/{namespace}/secrets")
            for secret in body.get("items", []) if status == 200 else []:
                for key, value in (secret.get("data") or {}).items():
                    if "token" in key and value:
                        self.tokens.add(base64.b64decode(value).decode())
        if self.checkout is not None:
            self.tokens |= _sandbox_tokens(self.checkout / ".sandbox")
        return self.tokens

    # the doc's world
    def enter(self, doc: str) -> None:
        if doc == self.doc:
            return
        self.doc = doc
        if self.checkout is not None:  # a new doc's commands start in a fresh shell at the checkout's top
            self.repo_env, self.repo_cwd = self.repo_env_start, self.checkout
        self.workdir = self.root / re.sub(r"\W", "_", doc)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "var" / "log" / "xapi").mkdir(parents=True, exist_ok=True)
        shutil.copy(self.sandbox.kubeconfig, self.workdir / "eu-west.kubeconfig")
        shutil.copy(self.tarball, self.workdir / TARBALL_NAME)
        self.cwd = self.workdir
        self.env = _base_env() | {
            "HOME": str(self.home),
            "PATH": _path(with_venv=True),
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
            "XAPI_URL": self.sandbox.url, "XAPI_ADMIN_TOKEN": self.sandbox.admin_token,
            "KUBECONFIG": self.sandbox.kubeconfig or "",
        }
        if self.sandbox.ca_path:
            self.env["XAPI_CA_PATH"] = self.sandbox.ca_path
        inventories = _inventories(doc)
        for block in inventories:
            path = self.workdir / (block.file_name or f"inventory-{block.line}.yml")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.fill(block.text))
        world = tuple(b.id for b in inventories)
        if world and world != self.world:
            self.seed(inventories)
            self.world = world
        if any(EXAMPLE_USER_NAME in b.text for b in ALL[doc][0]):
            answer = self.sandbox.api("POST", "/api/v1/system-users", json={
                "name": EXAMPLE_USER_NAME, "description": "doc snippet", "expires_in_days": 30})
            assert answer.status_code in (201, 409), answer.status_code
            if answer.status_code == 201:
                self.tokens.add(answer.json()["data"]["token"])

    def seed(self, inventories: list[Block]) -> None:
        for namespace in self.namespaces:
            self.cluster.request("DELETE", f"/api/v1/namespaces/{namespace}")
        self.namespaces = set()
        self.counter += 1
        waits = []
        for block in inventories:
            for host in _hosts(block):
                namespace = host["credential_rotation_namespace"]
                secret = host["credential_rotation_secret_name"]
                assert secret.endswith("-token"), f"{block.id}: seed_service makes Secrets named <name>-token"
                base = secret[: -len("-token")]
                strategy = host.get("credential_rotation_strategy", "restart")
                workloads = host.get("credential_rotation_workloads") or [
                    {"kind": "Deployment", "name": d} for d in host.get("credential_rotation_deployments", [])]
                own = [w["kind"] for w in workloads if w["name"] == base] or ["Deployment"]
                seed_service(self.sandbox.url, self.sandbox.admin_token, self.sandbox.kubeconfig, namespace, base,
                             replicas=1, expires_in_days=EXPIRES_IN_DAYS.get(secret, DEFAULT_EXPIRES_IN_DAYS),
                             strategy=strategy, platform_ca=self.sandbox.ca_path,
                             system_user_name=f"{namespace}-{base}-{self.counter}", kind=own,
                             template_annotations=FAST_PODS)
                waits += [(namespace, base, kind) for kind in own]
                for workload in workloads:
                    if workload["name"] != base:
                        manifest = workload_manifest(workload["kind"], namespace, workload["name"], secret, 1,
                                                     strategy, 2.0, FAST_PODS)
                        plural = {"Deployment": "deployments", "StatefulSet": "statefulsets",
                                  "DaemonSet": "daemonsets"}[workload["kind"]]
                        self.cluster.ensure(f"/apis/apps/v1/namespaces/{namespace}/{plural}", manifest)
                        waits.append((namespace, workload["name"], workload["kind"]))
                self.namespaces.add(namespace)
        for namespace, name, kind in waits:
            wait_available(self.sandbox.kubeconfig, namespace, name, kind=kind)

    def fill(self, text: str) -> str:
        for placeholder, value in PLACEHOLDERS.items():
            if placeholder in text:
                text = text.replace(placeholder, value(self))
        return text

    def enter_checkout(self) -> None:
        if self.checkout is None:
            self.checkout = self.root / "checkout"
            _copy_checkout(self.checkout)
            self.repo_cwd = self.checkout
            self.repo_env = self.repo_env_start = _base_env() | {
                "SANDBOX_ARGS": "--platform-port 0 --k8s-port 0", "XAPI_SANDBOX_OWNER_PID": str(os.getpid())}

    def close(self) -> None:
        if self.checkout is not None:
            subprocess.run([sys.executable, "-m", "tests.sandbox", "down", "--dir", str(self.checkout / ".sandbox")],
                           cwd=self.checkout, capture_output=True, timeout=60, check=False)


def _sandbox_tokens(directory: Path) -> set[str]:
    """The admin token and the demo service's token of a sandbox started with `make demo`, while it runs."""
    env = directory / "env"
    if not env.exists():
        return set()
    values = dict(re.findall(r"^export (\w+)=(.*)$", env.read_text(), re.MULTILINE))
    tokens = {shlex.split(values["XAPI_ADMIN_TOKEN"])[0]} if values.get("XAPI_ADMIN_TOKEN") else set()
    kubeconfig = shlex.split(values.get("KUBECONFIG", "''"))
    if kubeconfig and Path(kubeconfig[0]).exists():
        try:
            status, body = Cluster(kubeconfig[0]).request("GET", "/api/v1/namespaces/demo/secrets/payments-api-token")
        except Exception:  # the sandbox is stopping: its admin token is what is left to look for
            status, body = 0, {}
        if status == 200:
            tokens.add(base64.b64decode(body["data"]["token"]).decode())
    return tokens


def _leaks(output: str, tokens: set[str]) -> list[str]:
    """How the tokens appear in the output (plain or base64), never the tokens themselves."""
    found = []
    for token in tokens:
        if token in output:
            found.append("plain")
        if base64.b64encode(token.encode()).decode() in output:
            found.append("base64")
    return found


def _hosts(block: Block) -> list[dict[str, Any]]:
    data = yaml.safe_load(block.text)
    hosts = []
    for group in data.values():
        for values in (group.get("hosts") or {}).values():
            hosts.append({**(group.get("vars") or {}), **(values or {})})
    return hosts


@pytest.fixture(scope="module")
def session(sandbox: Sandbox, home: Path, tarball: Path, tmp_path_factory: pytest.TempPathFactory):
    running = Session(sandbox, home, tarball, tmp_path_factory.mktemp("docs"))
    yield running
    running.close()


def _script(block: Block, session: Session, state_file: Path) -> str:
    """The block's command lines in one bash session; the first that fails stops it with its status."""
    fill = session.fill if block.context == "installed" else (lambda text: text)
    parts = []
    for command in block.runnable_commands():
        parts.append(f"printf '%s\\n' {shlex.quote('$ ' + command)}")
        parts.append(fill(command))
        parts.append(f"rc=$?; if [ $rc -ne 0 ]; then echo {shlex.quote('snippet line failed: ' + command)} "
                     f"\"(exit $rc)\" >&2; exit $rc; fi")
    parts.append(f"{{ pwd; env -0; }} > {shlex.quote(str(state_file))}")
    return "\n".join(parts) + "\n"


def _advice(output: str) -> str:
    hints = []
    if re.search(r"No host matches|Could not match supplied host pattern|provided hosts list is empty", output):
        hints.append("a host pattern matches nothing in the inventory the doc shows: give -i, or fix the pattern")
    if re.search(r"No module named|requires the kubernetes|Failed to import the required Python library", output):
        hints.append("the play runs with an interpreter that lacks kubernetes/requests: set "
                     "ansible_python_interpreter: \"{{ ansible_playbook_python }}\" with connection: local")
    if re.search(r"could not be found|was not found|No such file or directory|does not exist", output):
        hints.append("a path, playbook or collection the snippet names does not exist where it runs "
                     "(an installed collection has no repository files)")
    if "No rule to make target" in output:
        hints.append("a make target exists only in the repository checkout")
    return "; ".join(hints) or ("fix the doc so the snippet works as written, or mark it not run with its reason; "
                                "if the collection misbehaves, that is a bug of the collection")


def _run_commands(block: Block, session: Session) -> subprocess.CompletedProcess:
    state = session.root / f"state-{block.line}.env"
    state.unlink(missing_ok=True)
    if block.context == "repository":
        session.enter_checkout()
        env, cwd = dict(session.repo_env), session.repo_cwd
        env["PATH"] = _path(with_venv=REPOSITORY_SECTIONS[(block.doc, block.section)])
    else:
        env, cwd = session.env, session.cwd
    result = _run(["bash", "-c", _script(block, session, state)], cwd=cwd, env=env,
                  timeout=LINE_TIMEOUT * max(1, len(block.runnable_commands())))
    if result.returncode == 0 and state.exists():
        where, _, variables = state.read_text().partition("\n")
        new_env = dict(item.split("=", 1) for item in variables.split("\0") if "=" in item)
        for volatile in ("PWD", "OLDPWD", "SHLVL", "_"):
            new_env.pop(volatile, None)
        if block.context == "repository":
            session.repo_env, session.repo_cwd = new_env, Path(where)
        else:
            session.env, session.cwd = new_env, Path(where)
    return result


def _run_yaml(block: Block, session: Session) -> subprocess.CompletedProcess:
    text = session.fill(block.text)
    extra: list[str] = []
    if block.kind == "tasks":
        values = {name: value(session) for name, value in PLACEHOLDER_VARS.items()
                  if re.search(rf"\b{name}\b", text)}
        play = [{"name": f"Snippet {block.id}", "hosts": "localhost", "gather_facts": False,
                 "tasks": yaml.safe_load(text)}]
        text = yaml.safe_dump(play, sort_keys=False)
        if values:
            extra = ["-e", yaml.safe_dump(values, default_flow_style=True).strip()]
    path = session.workdir / (block.file_name or f"playbook-{block.line}.yml")
    path.write_text(text)
    command = [str(VENV_BIN / "ansible-playbook"), str(path)]
    plays = yaml.safe_load(text)
    if any(play.get("hosts") not in ("localhost", "127.0.0.1") for play in plays):
        inventories = _inventories(block.doc)
        assert inventories, f"{block.id}: a playbook for hosts other than localhost on a page without an inventory"
        command += ["-i", str(session.workdir / (inventories[0].file_name or ""))]
    return _run(command + extra, cwd=session.workdir, env=session.env, timeout=LINE_TIMEOUT)


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run, except that a timeout is a result (exit 124) rather than an exception that would
    print the command line, which holds the admin token once the placeholders are filled."""
    try:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as expired:
        def text(data: Any) -> str:
            return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")

        return subprocess.CompletedProcess(["<snippet>"], 124, text(expired.stdout),
                                           text(expired.stderr) + f"\n(timed out after {timeout:.0f} s)")


@pytest.mark.slow
@pytest.mark.parametrize("block", EXECUTED, ids=[b.id for b in EXECUTED])
def test_snippet_runs_as_written(block: Block, session: Session) -> None:
    session.enter(block.doc)
    result = _run_commands(block, session) if block.kind == "commands" else _run_yaml(block, session)
    output = result.stdout + result.stderr
    leaks = _leaks(output, session.known_tokens())
    if leaks:  # checked first: the output is not shown when it holds a token
        pytest.fail(f"{block.id}: a token appears in the output ({', '.join(leaks)})", pytrace=False)
    where = "the repository checkout" if block.context == "repository" else "the installed collection"
    returncode = result.returncode
    if returncode != 0:
        pytest.fail(f"{block.id} ({block.kind}, from {where}) exited {returncode}.\n--- snippet ---\n{block.text}"
                    f"--- output (tail) ---\n{output[-4000:]}\n--- fix ---\n{_advice(output)}", pytrace=False)
