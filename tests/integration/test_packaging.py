"""Release hygiene: the collection builds, installs offline next to kubernetes.core, documents
itself through ansible-doc, passes galaxy-importer, yields a complete execution environment
context, and its changelog fragments make a valid release.

Everything runs the real tools from .venv against a tarball built from the working tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
KUBERNETES_CORE = REPO / ".collections" / "ansible_collections" / "kubernetes" / "core"
MODULES = ("system_user", "system_user_info", "system_user_deactivate")
GALAXY = yaml.safe_load((REPO / "galaxy.yml").read_text())
VERSION = GALAXY["version"]
TARBALL_NAME = f"xapi-system_auth-{VERSION}.tar.gz"


def _clean_env(**extra: str) -> dict[str, str]:
    """An environment that sees only what a test hands it: no repo ansible.cfg, no .collections."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_NOCOLOR"] = "1"
    env.update(extra)
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_clean_env(**env), capture_output=True, text=True,
                          timeout=timeout, check=False)


def _must(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (
        f"{result.args} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build")
    # Built from the repository itself, as a release would be (galaxy.yml's build_ignore applies).
    _must(_run([str(VENV_BIN / "ansible-galaxy"), "collection", "build", "--force", "--output-path", str(out)],
               cwd=REPO))
    path = out / TARBALL_NAME
    assert path.is_file(), f"ansible-galaxy did not write {path.name}: {sorted(p.name for p in out.iterdir())}"
    return path


@pytest.fixture(scope="module")
def installed(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("installed")
    cwd = tmp_path_factory.mktemp("cwd")
    galaxy = str(VENV_BIN / "ansible-galaxy")
    _must(_run([galaxy, "collection", "install", "--offline", "-p", str(dest), str(KUBERNETES_CORE)], cwd=cwd))
    # --offline: the dependency on kubernetes.core must be met by what is already installed there.
    _must(_run([galaxy, "collection", "install", "--offline", "-p", str(dest), str(tarball)], cwd=cwd))
    return dest


def _members(tarball: Path) -> list[str]:
    with tarfile.open(tarball) as tf:
        return [m.name for m in tf.getmembers()]


def test_tarball_holds_the_collection_and_nothing_for_developers_only(tarball: Path) -> None:
    names = _members(tarball)
    for required in ("MANIFEST.json", "FILES.json", "meta/runtime.yml", "COPYING", "README.md",
                     "meta/execution-environment.yml", "requirements.txt", "bindep.txt",
                     "extensions/awx/credential_type.yml", "extensions/awx/configure_awx.yml",
                     "hack/cron-rotate.sh", "changelogs/changelog.yaml", "playbooks/rotate.yml",
                     "roles/credential_rotation/meta/argument_specs.yml",
                     *(f"plugins/modules/{m}.py" for m in MODULES)):
        assert required in names, f"{required} is missing from {tarball.name}"
    forbidden_prefixes = (".venv/", ".collections/", ".cache/", ".sandbox/", ".git/", ".ci/", "tests/",
                          "benchmarks/", "docs/build/", "docs/site/", "molecule/", "context/")
    leaked = [n for n in names if n.startswith(forbidden_prefixes) or n.endswith((".pyc", ".tar.gz"))]
    assert not leaked, f"developer-only files in the tarball: {leaked[:20]}"
    # Only the cron wrapper is for users; every other hack/ script is tooling.
    assert sorted(n for n in names if n.startswith("hack/") and n != "hack/") == ["hack/cron-rotate.sh"]
    for dev_file in ("Makefile", "ruff.toml", "pytest.ini", ".ansible-lint", "constraints.txt",
                     "requirements-test.txt", "ansible.cfg"):
        assert dev_file not in names, f"{dev_file} should be in galaxy.yml build_ignore"


def test_installs_offline_next_to_kubernetes_core_and_ansible_doc_renders_the_modules(installed: Path,
                                                                                      tmp_path: Path) -> None:
    env = {"ANSIBLE_COLLECTIONS_PATH": str(installed)}
    listing = _must(_run([str(VENV_BIN / "ansible-galaxy"), "collection", "list", "-p", str(installed)],
                         cwd=tmp_path, **env))
    assert "xapi.system_auth" in listing and VERSION in listing
    assert "kubernetes.core" in listing

    listed = _must(_run([str(VENV_BIN / "ansible-doc"), "-l", "xapi.system_auth"], cwd=tmp_path, **env))
    for module in MODULES:
        assert f"xapi.system_auth.{module}" in listed
        doc = _must(_run([str(VENV_BIN / "ansible-doc"), "-t", "module", f"xapi.system_auth.{module}"],
                         cwd=tmp_path, **env))
        # Rendered from the installed copy, with the shared connection options pulled in.
        assert str(installed) in doc, f"ansible-doc did not read the installed {module}"
        for section in ("OPTIONS", "EXAMPLES", "RETURN VALUES", "api_url", "api_token"):
            assert section in doc, f"ansible-doc xapi.system_auth.{module} lacks {section}"
        assert "ERROR" not in doc


def test_role_argument_spec_renders_from_the_installed_collection(installed: Path, tmp_path: Path) -> None:
    doc = _must(_run([str(VENV_BIN / "ansible-doc"), "-t", "role", "xapi.system_auth.credential_rotation"],
                     cwd=tmp_path, ANSIBLE_COLLECTIONS_PATH=str(installed)))
    assert "ENTRY POINT: main" in doc or "ENTRY POINT: *main*" in doc, doc[:2000]


def test_galaxy_importer_accepts_the_tarball(tarball: Path) -> None:
    result = subprocess.run(["bash", str(REPO / "hack" / "galaxy-importer.sh"), str(tarball)], cwd=REPO,
                            env=_clean_env(), capture_output=True, text=True, timeout=900, check=False)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    assert result.returncode == 0 and not errors, "galaxy-importer rejected the collection:\n" + output[-6000:]
    assert f"{TARBALL_NAME} accepted" in output


def test_execution_environment_context_is_complete(tarball: Path, tmp_path: Path) -> None:
    # The EE definition reads the built tarball from beside itself, as after `ansible-galaxy collection build`.
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    for name in ("execution-environment.yml", "requirements.txt", "bindep.txt"):
        shutil.copy(REPO / name, spec_dir / name)
    shutil.copy(tarball, spec_dir / TARBALL_NAME)
    context = tmp_path / "context"
    _must(_run([str(VENV_BIN / "ansible-builder"), "create", "-f", "execution-environment.yml", "-c", str(context),
                "--output-filename", "Containerfile"], cwd=spec_dir))

    containerfile = (context / "Containerfile").read_text()
    definition = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    assert definition["version"] == 3
    assert f'EE_BASE_IMAGE="{definition["images"]["base_image"]["name"]}"' in containerfile
    assert "ansible-core" in containerfile and "ansible-runner" in containerfile
    # The galaxy stage installs requirements.yml from /build, where _build is copied.
    assert "COPY _build /build" in containerfile and "WORKDIR /build" in containerfile
    assert "ansible-galaxy collection install" in containerfile
    assert "introspect" in containerfile and "install-from-bindep" in containerfile

    build = context / "_build"
    assert (build / "requirements.txt").read_text().split() == (REPO / "requirements.txt").read_text().split()
    assert (build / "bindep.txt").read_text() == (REPO / "bindep.txt").read_text()
    galaxy_reqs = yaml.safe_load((build / "requirements.yml").read_text())["collections"]
    names = {c["name"] for c in galaxy_reqs}
    assert "kubernetes.core" in names
    local = [c for c in galaxy_reqs if c.get("type") == "file"]
    assert len(local) == 1, galaxy_reqs
    # Relative to /build in the image = relative to _build here; the file must be the built tarball.
    shipped = build / local[0]["name"]
    assert shipped.is_file(), (
        f"the EE context has no {local[0]['name']}; is the version in execution-environment.yml {VERSION}?"
    )
    assert shipped.read_bytes() == tarball.read_bytes()


def test_ansible_builder_introspect_lists_the_dependencies(installed: Path, tmp_path: Path) -> None:
    out = _must(_run([str(VENV_BIN / "ansible-builder"), "introspect", "--sanitize", str(installed)], cwd=tmp_path))
    data = yaml.safe_load(out.split("\n", 1)[1] if out.startswith("#") else out)
    ours = [line for line in data["python"] if line.endswith("# from collection xapi.system_auth")]
    for requirement in ("requests", "kubernetes", "python-dateutil"):
        assert any(line.startswith(requirement) for line in ours), f"{requirement} not introspected: {ours}"
    assert any(line.endswith("# from collection kubernetes.core") for line in data["python"])
    assert any(line.startswith("ca-certificates") and line.endswith("# from collection xapi.system_auth")
               for line in data["system"]), data["system"]
    # ansible-core comes with the EE's base, not from the collection's requirements.
    assert not any(line.startswith("ansible-core") for line in data["python"])


def test_changelog_fragments_make_a_valid_release(tmp_path: Path) -> None:
    # A release rewrites changelogs/ and CHANGELOG.rst: rehearse it on a copy of the tracked files.
    copy = tmp_path / "collection"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, copy / rel)
    changelog = str(VENV_BIN / "antsibull-changelog")
    _must(_run([changelog, "lint"], cwd=copy))
    _must(_run([changelog, "release", "--version", VERSION, "--date", "2026-12-01"], cwd=copy, timeout=600))
    rendered = (copy / "CHANGELOG.rst").read_text()
    assert re.search(r"^xapi\.system\\?_auth Release Notes$", rendered, re.MULTILINE), rendered[:300]
    assert f"v{VERSION}" in rendered
    # Every fragment's text reached the release notes.
    release = yaml.safe_load((copy / "changelogs" / "changelog.yaml").read_text())["releases"][VERSION]
    assert release["changes"], "the release has no changes: are there fragments in changelogs/fragments?"
    for module in MODULES:
        assert module in rendered, f"the new module {module} is not announced in the release notes"


# --- documentation -------------------------------------------------------------------------------

TROUBLESHOOTING = REPO / "docs" / "docsite" / "rst" / "guide_troubleshooting.rst"


def _normalized_sources(*patterns: str) -> str:
    """The source text of the role and the modules with string literals joined back together.

    Messages are written as Jinja concatenations (`'...' ~ '...'`), folded YAML scalars and
    implicitly concatenated Python f-strings; joining those makes a message's fixed words searchable.
    """
    text = "\n".join(p.read_text() for pattern in patterns for p in sorted(REPO.glob(pattern)))
    text = re.sub(r"(['\"])\s*~\s*\1", "", text)
    text = re.sub(r"\"\s*\n\s*[fr]?\"", "", text)
    return " ".join(text.split())


def _troubleshooting_messages() -> list[tuple[str, str]]:
    blocks = re.findall(r"\.\. code-block:: text\n\s+:caption: message \((role|module)\)\n\n((?:   .*\n)+)",
                        TROUBLESHOOTING.read_text())
    return [(kind, " ".join(body.split())) for kind, body in blocks]


def test_every_troubleshooting_message_exists_in_the_code() -> None:
    messages = _troubleshooting_messages()
    assert len(messages) >= 15, f"only {len(messages)} messages parsed from {TROUBLESHOOTING.name}"
    sources = {
        "role": _normalized_sources("roles/credential_rotation/tasks/*.yml", "plugins/module_utils/_rotation*.py",
                                    "plugins/action/rotation_observe.py", "playbooks/*.yml"),
        "module": _normalized_sources("plugins/module_utils/*.py", "plugins/modules/*.py"),
    }
    stale = []
    for kind, message in messages:
        # The words between placeholders are the message's fixed text; each must be in the code.
        # (A final period is often appended in code apart from the sentence.)
        chunks = [c.strip().rstrip(".") for c in re.split(r"<[^>]+>", message)]
        missing = [c for c in chunks if len(c) >= 3 and c not in sources[kind]]
        if missing:
            stale.append(f"{message!r}: not in the {kind} code: {missing}")
    assert not stale, "troubleshooting entries that no longer match the code:\n" + "\n".join(stale)


def test_docs_site_builds_offline_with_every_plugin_and_guide() -> None:
    result = subprocess.run(["bash", str(REPO / "hack" / "docs.sh")], cwd=REPO, env=_clean_env(),
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    html = REPO / "docs" / "build" / "html"
    index = (html / "index.html").read_text()
    for module in MODULES:
        page = html / f"{module}_module.html"
        assert page.is_file(), f"no page for {module}"
        assert f"xapi.system_auth.{module}" in page.read_text()
    assert (html / "credential_rotation_role.html").is_file(), "the role's page was not generated"
    guides = yaml.safe_load((REPO / "docs" / "docsite" / "extra-docs.yml").read_text())["sections"]
    for section in guides:
        for name in section["toctree"]:
            assert (html / "docsite" / f"{name}.html").is_file(), f"guide page {name} missing"
            assert f"docsite/{name}.html" in index, f"guide page {name} not linked from the index"


# --- molecule ------------------------------------------------------------------------------------

# What the sandboxes' tokens look like (docs/internals.md): none may ever be printed.
TOKEN_PATTERN = re.compile(r"\b(?:xsu|xadm|k8sadm)_[A-Za-z0-9_-]{20,}")


@pytest.mark.slow
def test_molecule_default_scenario_converges_idempotently_and_verifies() -> None:
    # The scenario's sandbox lives across converge, idempotence and verify: it belongs to this test
    # process (not to the short-lived command task that starts it), and stops with it.
    env = _clean_env(MOLECULE_NO_LOG="false", NO_COLOR="1", PY_COLORS="0", XAPI_SANDBOX_OWNER_PID=str(os.getpid()))
    result = subprocess.run([str(VENV_BIN / "molecule"), "test", "--scenario-name", "default"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    for action in ("converge", "idempotence", "verify", "cleanup"):
        assert re.search(rf"default\s+\S+\s+{action}: Executed: Successful", output), f"{action} did not run"
    # The role did rotate in converge (idempotence alone would also pass on a role that does nothing).
    assert re.search(r"payments-api: rotated", output), output[-5000:]
    assert not TOKEN_PATTERN.search(output), "a token appears in molecule's output"


def test_every_secret_annotation_and_key_the_role_writes_is_documented() -> None:
    guide = (REPO / "docs" / "docsite" / "rst" / "guide_secret_state.rst").read_text()
    # The rules name every annotation once (module_utils/_rotation_base.py), as A + "name".
    rules = (REPO / "plugins" / "module_utils" / "_rotation_base.py").read_text()
    role = rules + "\n".join(p.read_text() for p in sorted((REPO / "roles" / "credential_rotation").rglob("*.yml")))
    annotations = (set(re.findall(r'A \+ "([a-z][a-z-]+[a-z])"', rules))
                   | set(re.findall(r"xapi\.io/([a-z][a-z-]+[a-z])", role)))
    assert len(annotations) >= 10, f"too few annotations found in the role: {sorted(annotations)}"
    undocumented = sorted(a for a in annotations if f"``{a}``" not in guide and f"xapi.io/{a}" not in guide)
    assert not undocumented, f"annotations the role uses but guide_secret_state.rst does not explain: {undocumented}"
    for key in ("pending-token", "previous-token"):
        assert key in role and f"``{key}``" in guide
