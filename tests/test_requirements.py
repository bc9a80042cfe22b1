"""The runtime requirements are what production installs: everything the application imports,
and no test tool; the development requirements add the tools on top of them."""

import ast
import re
import sys
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPLICATION = ["accounts", "audiences", "campaigns", "config", "delivery", "journeys", "operations"]
TEST_TOOLS = {"pytest", "pytest-django", "pytest-xdist", "pytest-playwright", "playwright", "schemathesis", "ruff"}


def _names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[\[=<>~!]", line)[0].strip().lower().replace("_", "-"))
    return names


def _installed_by(requirements: set[str]) -> set[str]:
    """The requirements and everything they pull in, as pip installs them."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for requirement in requires:
            if "extra ==" in requirement:
                continue
            todo.append(re.split(r"[\[=<>~!; (]", requirement)[0].strip().lower().replace("_", "-"))
    return seen


def _imported_modules() -> dict[str, set[str]]:
    """{top-level module the application imports: the distributions that may provide it}."""
    modules = set()
    for folder in APPLICATION:
        for source in (ROOT / folder).rglob("*.py"):
            if "pushsim" in source.parts or source.name == "pushsim.py":
                continue  # the push simulator (make run, the tests): a development tool
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules.add(node.module.split(".")[0])
    owners = packages_distributions()
    return {
        module: {d.lower().replace("_", "-") for d in owners.get(module, [])}
        for module in modules - set(sys.stdlib_module_names) - set(APPLICATION)
    }


def test_runtime_requirements_hold_no_test_tool():
    assert not (_names(ROOT / "requirements.txt") & TEST_TOOLS)


def test_development_requirements_include_the_runtime_ones_and_the_tools():
    lines = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert "-r requirements.txt" in lines
    assert TEST_TOOLS <= _names(ROOT / "requirements-dev.txt")


def test_everything_the_application_imports_is_a_runtime_requirement():
    installed = _installed_by(_names(ROOT / "requirements.txt"))
    optional = {"sentry_sdk", "setproctitle", "psutil"}  # imported only when configured or present
    missing = [
        module
        for module, providers in _imported_modules().items()
        if module not in optional and not (providers & installed)
    ]
    assert not missing, f"imported by the application, installed by nothing in requirements.txt: {sorted(missing)}"
