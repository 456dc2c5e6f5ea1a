"""The Dockerfile's recipe, followed without a Docker engine, into a folder that stands for the image.

No Docker engine runs here, so this reads the Dockerfile and does what each instruction does, in
order: ``FROM python:3.X-slim`` becomes a fresh venv of a Python 3.X; ``WORKDIR`` a folder;
``COPY`` copies exactly the paths the Dockerfile names from the build context (minus what
``.dockerignore`` leaves out); ``RUN`` runs its shell line in the work dir with the venv first on
``PATH`` (so its ``python`` and ``pip`` are the image's); ``ENV`` and ``USER`` are kept for the
processes the tests start from the image. A folder the Dockerfile forgets to copy, a file the
wheel forgets, a dependency the first layer misses: the build or the services started from it fail.

The one instruction not replayed is ``RUN useradd``: it would change this machine's users. Its
``--uid`` is read instead, and the services run under that uid, as the image's ``USER`` does,
where this machine allows it (as root, with an interpreter that uid may execute).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from apps.harness.processes import as_user

INSTRUCTION = re.compile(r"^([A-Z]+)\s+(.*)$")


@dataclass
class Image:
    """What the recipe built: the venv that stands for the image's Python, its work dir, the
    environment its ``ENV`` lines set, and the uid its ``USER`` runs as (None: this user)."""

    root: Path
    venv: Path
    workdir: Path
    env: dict[str, str]
    uid: int | None
    why_not_uid: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def which(self, command: str) -> str:
        """``command`` as the image's ``PATH`` finds it."""
        found = shutil.which(command, path=self.env["PATH"])
        assert found, f"{command} is not on the image's PATH"
        return found

    def run(self, argv: list[str], env: dict[str, str], timeout: float = 30) -> int:
        """Run a command in the image (its user, its work dir); return the exit code."""
        done = subprocess.run(  # type: ignore[call-overload]
            argv,
            env=env,
            cwd=self.workdir,
            capture_output=True,
            timeout=timeout,
            **as_user(self.uid),
        )
        return int(done.returncode)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) for each instruction, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = INSTRUCTION.match(line)
        assert match, f"not an instruction: {line!r}"
        found.append((match.group(1), match.group(2).strip()))
    return found


def build(context: Path, dest: Path, dockerfile: str = "Dockerfile") -> Image:
    """Follow ``context/dockerfile`` into ``dest``; raises with the failing step's output."""
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o755)  # the image's user must reach the venv and the work dir
    ignored = _dockerignore(context)
    steps = instructions((context / dockerfile).read_text())
    assert steps[0][0] == "FROM", "a Dockerfile starts FROM its base image"
    venv = dest / "python"
    uid_wanted = _useradd_uid(steps)
    python, uid, why = _interpreter(_base_python(steps[0][1]), uid_wanted)
    _check([python, "-m", "venv", str(venv)], dest)
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}/usr/local/bin:/usr/bin:/bin", "HOME": str(dest)}
    image = Image(dest, venv, dest, env, None, why)
    for op, rest in steps[1:]:
        if op == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(rest)))
        elif op == "WORKDIR":
            image.workdir = dest / rest.lstrip("/")
            image.workdir.mkdir(parents=True, exist_ok=True)
        elif op == "COPY":
            *sources, target = shlex.split(rest)
            for source in sources:
                _copy(context / source, image.workdir / target, target.endswith("/"), ignored)
        elif op == "RUN" and rest.split()[0] != "useradd":
            _check(["bash", "-c", rest], image.workdir, env)
        elif op == "USER":
            image.uid = uid
        elif op == "LABEL":
            image.labels.update(dict(item.split("=", 1) for item in shlex.split(rest)))
    return image


def _check(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise AssertionError(f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")


def _base_python(base: str) -> str:
    """``python:3.11-slim`` → ``3.11``; the base must be the Python these tests run on."""
    match = re.fullmatch(r"python:(3\.\d+)(?:-\S+)?", base)
    assert match, f"unexpected base image {base!r}"
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert match.group(1) == minor, f"the image's Python is {match.group(1)}, the tests' {minor}"
    return match.group(1)


def _useradd_uid(steps: list[tuple[str, str]]) -> int | None:
    for op, rest in steps:
        if op == "RUN" and rest.split()[0] == "useradd":
            match = re.search(r"--uid\s+(\d+)", rest)
            assert match, "useradd names its uid, so the image's user is known"
            return int(match.group(1))
    return None


def _interpreter(minor: str, uid: int | None) -> tuple[str, int | None, str]:
    """A Python ``minor`` that ``uid`` may execute, and the uid to run as (None, and why, where
    this machine cannot switch to it)."""
    if uid is None:
        return sys.executable, None, "the Dockerfile has no useradd"
    if os.geteuid() != 0:
        return sys.executable, None, "the tests do not run as root, so they cannot switch users"
    for candidate in (os.path.realpath(sys.executable), f"/usr/bin/python{minor}"):
        probe = [candidate, "-c", "import venv, ensurepip"]
        try:
            done = subprocess.run(  # type: ignore[call-overload]
                probe, capture_output=True, timeout=30, **as_user(uid)
            )
        except OSError:
            continue
        if done.returncode == 0:
            return candidate, uid, ""
    return sys.executable, None, f"no Python {minor} with venv that uid {uid} may execute"


def _dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.removeprefix("**/") for line in lines if line and not line.startswith("#")]


def _copy(source: Path, target: Path, into: bool, ignored: list[str]) -> None:
    """``COPY source target``: a folder's contents into ``target``; a file to ``target``, or
    into it when it ends with ``/``."""
    assert source.exists(), f"COPY {source.name}: not in the build context"

    def skip(_folder: str, names: list[str]) -> list[str]:
        return [n for n in names if any(fnmatch.fnmatch(n, pattern) for pattern in ignored)]

    if source.is_dir():
        shutil.copytree(source, target, ignore=skip, dirs_exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / source.name if into else target)
