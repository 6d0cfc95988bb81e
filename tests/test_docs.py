"""The documentation is self-contained: nothing cites working notes that are not in the repository,
and every docs/ file the code points to exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = (".py", ".md", ".h", ".cpp", ".cu", ".cuh", ".sh", ".toml", ".txt")
SKIP = {".venv", "build", ".git", "__pycache__", "runs", "data", ".pytest_cache"}


def _files():
    for path in ROOT.rglob("*"):
        if path.suffix in SOURCES and path.is_file() and not SKIP & set(path.relative_to(ROOT).parts):
            yield path


def test_no_citation_of_notes_outside_the_repository():
    pattern = re.compile(r"spec/[A-Z]+\.md")
    cited = [f"{path.relative_to(ROOT)}:{n}" for path in _files()
             for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]
    assert not cited, f"cites files that are not in the repository (point to docs/ instead): {cited}"


def test_cited_docs_exist():
    pattern = re.compile(r"docs/([a-z_]+\.md)")
    missing = sorted({f"{path.relative_to(ROOT)} -> docs/{m}" for path in _files()
                      for m in pattern.findall(path.read_text(errors="replace")) if not (ROOT / "docs" / m).is_file()})
    assert not missing, missing
