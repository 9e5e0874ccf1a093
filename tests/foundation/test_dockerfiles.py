"""Each Dockerfile's own install steps work, replayed without a Docker engine.

The replay reads the Dockerfile and carries out its instructions in order: FROM starts a
stage, WORKDIR and ENV set where and with what the next steps run, COPY copies from the
build context (honouring .dockerignore) or from an earlier stage, RUN runs through /bin/sh.
Every stage runs at the same temporary root path, as every stage of an image sees `/`, so a
venv copied from the build stage into the final one works at the path it was built for. The
base image's Python is this test's CPython 3.11. Absolute paths in the Dockerfile are
rewritten under that root. Then the final stage's ENTRYPOINT must answer `--help`, from the
final stage's PATH, and the venv must hold exactly its lock's packages and the project.

Nothing here copies the Dockerfile's commands: an edit that breaks a step breaks this test.
Downloads come from the package index; the Dockerfiles turn pip's cache off (it would only
grow the image's build stage), the replay turns it back on to stay fast.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.foundation.locks import read_lock

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
IMAGES = {"Dockerfile.poller": "poller.txt", "Dockerfile.operator": "operator.txt"}
# A base image pinned to an exact version and to the digest of what that tag named.
PINNED_BASE = re.compile(r"^python:3\.11\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}$")
# Paths the replay leaves alone: the host's devices and kernel views, not the image's files.
HOST_PATHS = ("/dev/", "/proc/")
# An absolute path in an instruction: after a start, a blank, `=`, `:` or a quote; never `//`.
ABSOLUTE = re.compile(r"(?<![^\s='\":])/(?!/)")
# The host environment a RUN step keeps, so pip reaches the index as it does here.
PASSED_ENV = ("HOME", "LANG", "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
STEP_TIMEOUT = 600


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


def parse(dockerfile: Path) -> list[Stage]:
    """The stages of a Dockerfile: comments dropped, continued lines joined."""
    stages: list[Stage] = []
    logical, start = "", 0
    for number, raw in enumerate(dockerfile.read_text().splitlines(), start=1):
        text = raw.strip()
        if text.startswith("#") or not text:
            continue  # a comment inside a continued instruction is dropped too, as Docker does
        if not logical:
            start = number
        logical += " " + text.removesuffix("\\").strip()
        if text.endswith("\\"):
            continue
        keyword, _, arguments = logical.strip().partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip(), start)
        logical = ""
        if instruction.keyword == "FROM":
            base, *alias = instruction.arguments.split()
            assert len(alias) in (0, 2) and alias[:1] in ([], ["AS"], ["as"]), (
                f"{dockerfile.name}:{start}: FROM {alias}"
            )
            stages.append(Stage(base, alias[1] if alias else None))
        else:
            assert stages, f"{dockerfile.name}:{start}: {instruction.keyword} before any FROM"
            stages[-1].instructions.append(instruction)
    assert not logical, f"{dockerfile.name} ends inside a continued line"
    return stages


def exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), (
        f"line {instruction.line}: {instruction.keyword} must be a JSON list (exec form), so signals reach the process"
    )
    return value


def env_pairs(arguments: str) -> list[tuple[str, str]]:
    words = shlex.split(arguments)
    if "=" not in words[0]:  # the legacy `ENV NAME value` form
        return [(words[0], " ".join(words[1:]))]
    return [tuple(word.split("=", 1)) for word in words]  # type: ignore[misc]


def dockerignore() -> list[str]:
    ignore = REPO / ".dockerignore"
    patterns = [line.strip() for line in ignore.read_text().splitlines()] if ignore.exists() else []
    patterns = [p.strip("/") for p in patterns if p and not p.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")], "the replay does not know .dockerignore exceptions (!)"
    return patterns


def ignored(relative: str, patterns: list[str]) -> bool:
    # Docker matches each pattern against the path from the context root; `**` spans folders.
    for pattern in patterns:
        # fnmatch's `*` also spans `/`; `**/x` matches `x` at the root too.
        if fnmatchcase(relative, pattern) or (pattern.startswith("**/") and fnmatchcase(relative, pattern[3:])):
            return True
    return False


class Replay:
    """Carries out one Dockerfile's instructions under `root`; earlier stages are kept aside."""

    def __init__(self, dockerfile: Path, work: Path) -> None:
        self.dockerfile = dockerfile
        self.work = work
        self.root = work / "root"
        self.stages: dict[str, Path] = {}
        # The base image's `python`: this test's CPython, under the name the image gives it.
        shim = work / "base-image-bin"
        shim.mkdir()
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        (shim / "python").symlink_to(os.path.realpath(Path(sys.base_prefix) / "bin" / version))
        self.base_path = f"{shim}:/usr/bin:/bin"
        self.ignore = dockerignore()

    def rooted(self, text: str) -> str:
        """`text` with its absolute paths moved under the replay's root."""

        def move(match: re.Match[str]) -> str:
            rest = text[match.start() :]
            return "/" if rest.startswith(HOST_PATHS) else f"{self.root}/"

        return ABSOLUTE.sub(move, text)

    def run_stage(self, number: int, stage: Stage) -> dict[str, str]:
        if self.root.exists():  # the previous stage's filesystem, for COPY --from
            self.root.rename(self.work / f"stage-{number - 1}")
        self.root.mkdir()
        env = {"PATH": self.base_path}
        workdir = self.root
        for instruction in stage.instructions:
            where = f"{self.dockerfile.name}:{instruction.line}"
            if instruction.keyword == "ENV":
                for name, value in env_pairs(instruction.arguments):
                    env[name] = self.expand(value, env)
            elif instruction.keyword == "WORKDIR":
                workdir = Path(self.rooted(instruction.arguments))
                workdir.mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "COPY":
                self.copy(instruction, workdir, where)
            elif instruction.keyword == "RUN":
                self.run(instruction, workdir, env, where)
            elif instruction.keyword not in ("USER", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL"):
                pytest.fail(f"{where}: the replay does not know {instruction.keyword}; teach it in this test")
        if stage.name:
            self.stages[stage.name] = self.work / f"stage-{number}"
        return env

    def expand(self, value: str, env: dict[str, str]) -> str:
        """An ENV value: its paths under the root, then $NAME from the stage's own ENV."""
        return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], ""), self.rooted(value))

    def copy(self, instruction: Instruction, workdir: Path, where: str) -> None:
        words = instruction.arguments.split()
        flags = [w for w in words if w.startswith("--")]
        *sources, destination = [w for w in words if not w.startswith("--")]
        source_root = REPO
        for flag in flags:
            assert flag.startswith("--from="), f"{where}: the replay does not know COPY {flag}"
            stage = flag.removeprefix("--from=")
            assert stage in self.stages, f"{where}: no earlier stage named {stage!r}"
            source_root = self.stages[stage]
        target = Path(self.rooted(destination)) if destination.startswith("/") else workdir / destination
        for source in sources:
            path = source_root / source.lstrip("/")
            assert path.exists(), f"{where}: COPY source {source} does not exist"
            if path.is_dir():
                # A folder's contents land in the destination, as Docker copies them.
                shutil.copytree(path, target, symlinks=True, dirs_exist_ok=True, ignore=self.ignore_in(source_root))
            else:
                into = target / path.name if destination.endswith("/") or len(sources) > 1 else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, into)

    def ignore_in(self, source_root: Path) -> Callable[[str, list[str]], set[str]] | None:
        if source_root != REPO:
            return None  # .dockerignore filters the build context only

        def skip(directory: str, names: list[str]) -> set[str]:
            relative = Path(directory).relative_to(REPO).as_posix()
            return {n for n in names if ignored(f"{relative}/{n}".removeprefix("./"), self.ignore)}

        return skip

    def run(self, instruction: Instruction, workdir: Path, env: dict[str, str], where: str) -> None:
        assert not instruction.arguments.startswith("["), f"{where}: the replay runs RUN in shell form only"
        step_env = {k: v for k, v in os.environ.items() if k in PASSED_ENV or k.startswith("PIP_")}
        step_env.update(env)
        step_env.pop("PIP_NO_CACHE_DIR", None)  # pip's cache keeps the replay fast; see the docstring
        command = self.rooted(instruction.arguments)
        done = subprocess.run(
            ["/bin/sh", "-c", command],
            check=False,
            cwd=workdir,
            env=step_env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
        )
        assert done.returncode == 0, (
            f"{where}: RUN failed with {done.returncode}\n{instruction.arguments}\n"
            f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
        )


def final_instructions(stage: Stage, keyword: str) -> list[Instruction]:
    return [i for i in stage.instructions if i.keyword == keyword]


@pytest.mark.parametrize("dockerfile", list(IMAGES))
def test_the_base_image_is_pinned_by_version_and_digest(dockerfile: str) -> None:
    stages = parse(REPO / dockerfile)
    for stage in stages:
        assert PINNED_BASE.match(stage.base) or stage.base in {s.name for s in stages}, (
            f"{dockerfile}: FROM {stage.base} is not an exact python:3.11.N tag with its @sha256 digest"
        )
    # The venv the final stage copies links to the build stage's interpreter: one base for both.
    assert len({stage.base for stage in stages}) == 1, f"{dockerfile}: the stages start from different bases"


def test_both_images_start_from_the_same_base() -> None:
    bases = {parse(REPO / dockerfile)[0].base for dockerfile in IMAGES}
    assert len(bases) == 1, f"the images start from different bases: {bases}"


@pytest.mark.parametrize("dockerfile", list(IMAGES))
def test_the_final_stage_only_copies_the_venv_and_runs_as_a_numeric_non_root_user(dockerfile: str) -> None:
    final = parse(REPO / dockerfile)[-1]
    # No RUN: no compiler, package manager or cache can be left in the image's layers.
    assert not final_instructions(final, "RUN"), f"{dockerfile}: the final stage runs commands"
    for copy in final_instructions(final, "COPY"):
        assert copy.arguments.startswith("--from="), (
            f"{dockerfile}:{copy.line}: the final stage copies from the context"
        )
    (user,) = final_instructions(final, "USER")
    assert re.fullmatch(r"\d+(:\d+)?", user.arguments), f"{dockerfile}: USER {user.arguments} is not numeric"
    uid, _, gid = user.arguments.partition(":")
    assert int(uid) == 65532 and gid in ("", "65532"), f"{dockerfile}: USER {user.arguments}; the pods run as 65532"


@pytest.mark.parametrize("dockerfile", list(IMAGES))
def test_the_install_steps_work_and_the_entrypoint_answers_help(dockerfile: str, tmp_path: Path) -> None:
    replay = Replay(REPO / dockerfile, tmp_path)
    stages = parse(REPO / dockerfile)
    env: dict[str, str] = {}
    for number, stage in enumerate(stages):
        env = replay.run_stage(number, stage)

    (entrypoint,) = final_instructions(stages[-1], "ENTRYPOINT")
    program, *arguments = exec_form(entrypoint)
    found = shutil.which(program, path=env["PATH"])
    assert found is not None, f"{dockerfile}: {program} is not on the final stage's PATH {env['PATH']}"
    assert Path(found).is_relative_to(replay.root), f"{dockerfile}: {program} comes from outside the image: {found}"
    # `docker run IMAGE --help` replaces CMD with --help.
    done = subprocess.run(
        [found, *arguments, "--help"],
        check=False,
        env={**env, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{dockerfile}: {program} --help exited {done.returncode}\n{done.stderr[-4000:]}"
    assert "usage" in done.stdout.lower()

    venv = Path(found).parent.parent
    (site_packages,) = venv.glob("lib/python3.*/site-packages")
    installed = {
        canonicalize_name(d.metadata["Name"]) for d in importlib.metadata.distributions(path=[str(site_packages)])
    }
    locked = set(read_lock(IMAGES[dockerfile]))
    # Exactly the lock and the project: no build tool (pip, setuptools, wheel), nothing unpinned,
    # and for the poller none of the operator's own dependencies.
    assert installed == locked | {"model-poller"}, (
        f"{dockerfile}: beyond the lock {sorted(installed - locked - {'model-poller'})}, missing {sorted(locked - installed)}"
    )
    if IMAGES[dockerfile] == "poller.txt":
        assert "kopf" not in installed
