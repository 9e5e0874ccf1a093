"""The docs that must follow the code: the generated reference, the troubleshooting page's
list of condition reasons, and the links between the pages."""

from __future__ import annotations

import ast
import difflib
import re
import subprocess
import sys
from pathlib import Path

from model_poller_api import models

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "docs" / "reference"
TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"
OPERATOR_PACKAGE = REPO / "operator" / "model_poller_operator"


def test_reference_matches_what_the_code_generates(tmp_path: Path) -> None:
    """docs/reference/ is exactly what hack/gen_reference.py writes from the CRD schema,
    the poller's flags and the operator's settings."""
    subprocess.run([sys.executable, str(REPO / "hack" / "gen_reference.py"), str(tmp_path)], check=True, cwd=REPO)
    generated = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.glob("*.md")}
    committed = {p.name: p.read_text(encoding="utf-8") for p in REFERENCE.glob("*.md")}
    assert generated, "hack/gen_reference.py wrote nothing"
    assert sorted(committed) == sorted(generated), f"docs/reference/ holds {sorted(committed)}: run make docs"
    for name, text in generated.items():
        if committed[name] != text:
            diff = "".join(
                list(
                    difflib.unified_diff(
                        committed[name].splitlines(keepends=True),
                        text.splitlines(keepends=True),
                        f"docs/reference/{name}",
                        "generated from the code",
                    )
                )[:40]
            )
            raise AssertionError(f"docs/reference/{name} differs from the code: run make docs\n{diff}")


def condition_reasons() -> set[str]:
    """Every reason a ModelDeployment condition can carry, from the code: the operator's
    REASON_* constants (read from the source, so no module with side effects is imported),
    the pollers' typed reasons, and the kubelet's reasons the Ready condition passes on."""
    from model_poller_operator import status_reasons

    reasons = {r.value for r in models.ReportReason} | set(status_reasons.POD_FAILURE_REASONS)
    for path in sorted(OPERATOR_PACKAGE.glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            target = (
                node.target
                if isinstance(node, ast.AnnAssign)
                else (node.targets[0] if isinstance(node, ast.Assign) else None)
            )
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            if (
                isinstance(target, ast.Name)
                and target.id.startswith("REASON_")
                and isinstance(value, ast.Constant)
                and isinstance(value.value, str)
            ):
                reasons.add(value.value)
    return reasons


def documented_reasons() -> set[str]:
    """The `Reason`s named in the headings of docs/troubleshooting.md."""
    headings = [line for line in TROUBLESHOOTING.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    return {name for line in headings for name in re.findall(r"`([A-Za-z]+)`", line)}


def test_troubleshooting_has_a_section_for_every_reason() -> None:
    reasons = condition_reasons()
    # The collection itself works: a few reasons every release has.
    assert {"AllReplicasServing", "ChildrenApplied", "VersionRejected", "ImagePullBackOff"} <= reasons
    missing = sorted(reasons - documented_reasons())
    assert not missing, (
        f"docs/troubleshooting.md has no section for {missing}: add one (what the user sees, what to do)"
    )


def test_troubleshooting_names_only_reasons_the_code_has() -> None:
    """A section under Ready, Synced or Degraded is a reason some condition can carry."""
    section, named = "", set()
    for line in TROUBLESHOOTING.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("### ") and section in ("Ready", "Synced", "Degraded"):
            named |= set(re.findall(r"`([A-Za-z]+)`", line))
    unknown = sorted(named - condition_reasons())
    assert not unknown, f"docs/troubleshooting.md describes reasons the code never sets: {unknown}"


# [text](target) where target is a relative path (optionally with #anchor), not a URL.
_LINK = re.compile(r"\]\((?!https?://|mailto:|#)([^)#\s]+)(?:#[^)\s]*)?\)")
# Code is not prose: a regex in a code span or a shell line may look like a link.
_CODE = re.compile(r"```.*?```|``.*?``|`[^`\n]*`", re.DOTALL)


def links(page: Path) -> list[str]:
    return _LINK.findall(_CODE.sub("", page.read_text(encoding="utf-8")))


def test_links_between_the_docs_resolve() -> None:
    """Every relative link of the README and docs/ points to a file that exists."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    broken = [
        f"{page.relative_to(REPO)}: {target}"
        for page in pages
        for target in links(page)
        if not (page.parent / target).exists()
    ]
    assert not broken, f"links to files that do not exist: {broken}"
