"""environment.yml mirrors pyproject.toml; the README opens with the two commands."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(spec: str) -> str:
    return re.split(r"[<>=!~;\[ ]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    py_specs = project["dependencies"] + project["optional-dependencies"]["dev"]
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:") + 1
    yml_specs = [ln.strip()[2:] for ln in lines[start:] if ln.strip().startswith("- ")]
    yml_specs = [s for s in yml_specs if not s.startswith("-e")]
    assert {_name(s): s for s in yml_specs} == {_name(s): s for s in py_specs}


def test_readme_opens_with_demo_and_test_commands():
    head = (ROOT / "README.md").read_text().splitlines()[:15]
    assert any("make demo" in ln for ln in head) and any("make test" in ln for ln in head)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
