"""What users install is what the tests prove.

The wheel and the sdist hold every file the packages have (Lua scripts and pages included); under
``CI=true`` (where ``scripts/test`` installs the project non-editable) the tests and every process
they start import the installed distribution, not the checkout; one version everywhere; and the
README's quickstart, run as a new user runs it (a clean clone, a fresh venv, ``pip install``, a
directory outside the checkout), shows the durable rows with nothing lost.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from apps.harness.processes import CLI, module_command
from tests.support.helpers import IN_CI, child_env

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "inmemory", "durable", "apps")


def tree_files() -> list[str]:
    """The files a clean clone of this checkout has (tracked, or new and not ignored)."""
    if not (ROOT / ".git").exists():
        pytest.fail("needs a git checkout to know which files a clean clone has")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    return sorted(p for p in set(listed.split("\0")) if p and (ROOT / p).is_file())


def clean_copy(dest: Path) -> Path:
    """A copy of the tree as a clean clone has it (no caches, no venv, no build leftovers)."""
    for name in tree_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    return dest


def package_files() -> list[str]:
    return [p for p in tree_files() if p.split("/", 1)[0] in PACKAGES]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel built from it, as pip builds them, from a clean copy of the tree."""
    tmp = tmp_path_factory.mktemp("dists")
    source = clean_copy(tmp / "src")
    out = tmp / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {"wheel": next(out.glob("*.whl")), "sdist": next(out.glob("*.tar.gz"))}


@pytest.mark.slow  # builds the sdist and the wheel (seconds)
def test_the_wheel_holds_every_file_the_packages_have(dists: dict[str, Path]) -> None:
    """Each file under pipeline/, inmemory/ and durable/ is in the wheel (built from the sdist);
    the assertion names every one it lacks."""
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        shipped = set(wheel.namelist())
    missing = [p for p in package_files() if p not in shipped]
    assert missing == [], f"the wheel lacks {len(missing)} file(s) of the tree: {missing}"
    assert any(p.startswith("durable/lua/") for p in shipped)


@pytest.mark.slow  # builds the sdist and the wheel (seconds)
def test_the_sdist_holds_every_file_the_packages_have(dists: dict[str, Path]) -> None:
    """Each file of the packages, pyproject.toml and the README are in the sdist."""
    with tarfile.open(dists["sdist"]) as sdist:
        shipped = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    wanted = [*package_files(), "pyproject.toml", "README.md"]
    missing = [p for p in wanted if p not in shipped]
    assert missing == [], f"the sdist lacks {len(missing)} file(s) of the tree: {missing}"


def _from_checkout(where: Path) -> bool:
    return any(where.is_relative_to(ROOT / package) for package in PACKAGES)


@pytest.mark.skipif(not IN_CI, reason="day to day the install is editable; CI installs the wheel")
def test_under_ci_the_tests_import_the_installed_distribution() -> None:
    """With CI=true, pipeline, inmemory and durable come from site-packages, not the checkout."""
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    for name in PACKAGES:
        where = Path(importlib.import_module(name).__file__ or "").resolve()
        assert not _from_checkout(where), f"{name} was imported from the checkout: {where}"
        assert where.is_relative_to(purelib), f"{name} is not from site-packages: {where}"


def _version_line(argv: list[str]) -> tuple[str, Path]:
    done = subprocess.run(
        [*argv, "--version"], cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    match = re.fullmatch(r"queue-contrast (\S+) \((.+)\)\n", done.stdout)
    assert match, done.stdout
    return match.group(1), Path(match.group(2))


@pytest.mark.slow  # starts the CLI as processes
def test_child_processes_run_the_code_the_tests_import() -> None:
    """The console script and ``python -P -m`` children, started inside the checkout, run the
    same copy of the code the tests import (under CI: the installed one, never the source tree)."""
    here = Path(importlib.import_module("apps").__file__ or "").resolve().parents[1]
    for argv in (CLI, module_command("apps.cli")):
        _, where = _version_line(argv)
        assert where == here, (argv, where, here)
        if IN_CI:
            assert where != ROOT, f"{argv} ran the checkout's code"


@pytest.mark.slow  # starts the CLI as a process
def test_one_version_everywhere() -> None:
    """pyproject.toml, the installed metadata, `queue-contrast --version`, the CHANGELOG's newest
    release and the image's label give the same version."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        declared = tomllib.load(f)["project"]["version"]
    printed, _ = _version_line(CLI)
    changelog = re.search(r"^## \[(\d[^\]]*)\] - \d{4}-\d\d-\d\d$", _read("CHANGELOG.md"), re.M)
    label = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', _read("Dockerfile"))
    assert changelog and label
    found = {
        "metadata": version("queue-contrast"),
        "--version": printed,
        "CHANGELOG": changelog.group(1),
        "Dockerfile": label.group(1),
    }
    assert found == dict.fromkeys(found, declared), f"pyproject says {declared}: {found}"


def _read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


@pytest.mark.slow  # a fresh venv, a pip install and the whole default crash demo (about a minute)
def test_quickstart_from_a_clean_clone_in_a_fresh_venv(tmp_path: Path) -> None:
    """`pip install <clean clone>` into a fresh venv, then `queue-contrast crash-demo` from a
    directory outside the checkout: the durable and stock-arq rows lose nothing, in-memory does."""
    clone = clean_copy(tmp_path / "clone")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(clone)]
    installed = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in child_env().items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    demo = subprocess.run(
        ["queue-contrast", "crash-demo", "--json"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    runs = {run["backend"]: run for run in json.loads(demo.stdout)["runs"]}
    assert set(runs) == {"inmemory", "durable", "stock-arq"}, runs
    for name in ("durable", "stock-arq"):
        assert runs[name]["lost"] == 0 and runs[name]["submitted"] > 0, runs[name]
    assert runs["inmemory"]["lost"] > 0, runs["inmemory"]
    assert (elsewhere / "crash-demo.svg").exists()
