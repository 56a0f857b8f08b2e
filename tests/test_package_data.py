"""pyproject.toml's package-data patterns ship every file the library reads at run time and every README it points to.

An installed (non-editable) actkit holds only the .py files plus what these patterns match; a file they miss works
in a checkout and is gone from a wheel (as ``observe/README.md``, the documented JSON schema of ``actkit profile``,
was). The patterns are expanded here as setuptools expands them: `glob.glob` under the package folder.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

from actkit.models import TOY_MODELS, builtin_folder
from actkit.steer.pairs import DATA_DIR

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "actkit"


def shipped() -> set[Path]:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["actkit"]
    return {Path(p).resolve() for pattern in patterns for p in glob.glob(str(PACKAGE / pattern)) if Path(p).is_file()}


def test_every_non_python_file_of_the_package_is_shipped() -> None:
    files = {p.resolve() for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")}
    missing = sorted(str(p.relative_to(PACKAGE)) for p in files - shipped())
    assert missing == [], f"add these to [tool.setuptools.package-data] in pyproject.toml: {missing}"


def test_the_files_the_code_opens_are_shipped() -> None:
    opened = [p for name in TOY_MODELS for p in builtin_folder(name).iterdir()] + sorted(DATA_DIR.glob("*.jsonl"))
    assert len(opened) >= 2 * 8 + 4  # each toy folder holds config, weights, tokenizer, ...; four pairs files
    assert {p.resolve() for p in opened} <= shipped()


def test_every_readme_the_docs_point_to_is_shipped() -> None:
    docs = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.md")]
    named = {m for doc in docs for m in re.findall(r"(?:src/)?actkit/(\w+/README\.md)", doc.read_text())}
    assert "observe/README.md" in named
    assert {(PACKAGE / n).resolve() for n in named} <= shipped(), named
