"""The documentation: the site builds with ``--strict``, every Python block in README.md and
docs/**/*.md runs as written, the preset tables match the code, every public name is documented.

A block fenced as ```` ```python notest ```` is not executed (it needs data or hours); every other
``python`` block of a page runs, top to bottom in one namespace, in a temporary folder.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import pushforward as pf

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<code>.*?)^(?P=indent)```[ \t]*$",
                   re.M | re.S)


def _hooks() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("pushforward_docs_hooks", ROOT / "docs/hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line, code)`` of every executable Python block: info string ``python`` or ``py``,
    without ``notest``."""
    blocks = []
    for match in FENCE.finditer(text):
        words = match.group("info").split()
        if not words or words[0] not in ("python", "py") or "notest" in words[1:]:
            continue
        indent = len(match.group("indent"))
        code = "\n".join(line[indent:] for line in match.group("code").splitlines())
        blocks.append((text.count("\n", 0, match.start()) + 2, code))
    return blocks


def test_extractor_reads_fences_and_skips_notest():
    text = ("a\n```python\nx = 1\n```\n\n```python notest\nraise SystemExit\n```\n"
            "```bash\nls\n```\n")
    assert python_blocks(text) == [(3, "x = 1")]


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p.read_text("utf-8"))],
                         ids=_name)
def test_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dtype, validating = torch.get_default_dtype(), pf.is_validating()
    namespace: dict = {"__name__": f"docs:{_name(page)}"}
    try:
        for line, code in python_blocks(page.read_text("utf-8")):
            try:
                exec(compile(code, f"{_name(page)}:{line}", "exec"), namespace)  # noqa: S102
            except Exception as error:
                raise AssertionError(
                    f"{_name(page)}, the block at line {line} fails: {error!r}"
                ) from error
    finally:
        torch.set_default_dtype(dtype)
        pf.set_validation(validating)


def test_every_public_name_has_a_docstring():
    pytest.importorskip("griffe")
    assert _hooks().missing_docstrings() == []


def test_public_docstrings_have_args_and_returns():
    assert sorted(_hooks().incomplete_docstrings()) == [], "incomplete docstrings (Args/Returns)"


def test_preset_tables_are_current():
    import presets_table

    assert presets_table.current() == presets_table.generate(), (
        "docs/guide/presets.md is out of date: run `python tests/presets_table.py`"
    )
    for name in pf.flows.names():
        assert f"{{#{name}}}" in presets_table.current()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out),
         "--config-file", str(ROOT / "mkdocs.yml")],
        cwd=ROOT, capture_output=True, text=True, env={**_env(), "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return out


def _env() -> dict:
    from processes import child_env

    return child_env()


def test_site_builds_strictly(site):
    assert (site / "index.html").is_file()
    assert (site / "guide" / "presets" / "index.html").is_file()


def test_api_pages_cover_every_public_name(site):
    ids = set()
    for page in (site / "api").rglob("index.html"):
        ids |= set(re.findall(r'id="(pushforward[\w.]*)"', page.read_text("utf-8")))
    missing = []
    for module, name, obj in _hooks().public_names():
        wanted = {f"{module}.{name}"}
        if isinstance(obj, types.ModuleType):
            wanted.add(obj.__name__)
        elif hasattr(obj, "__module__") and hasattr(obj, "__qualname__"):
            wanted.add(f"{obj.__module__}.{obj.__qualname__}")
        if not wanted & ids:
            missing.append(f"{module}.{name}")
    assert missing == [], f"public names with no API entry: {missing}"


def test_every_preset_is_on_the_presets_page(site):
    html = (site / "guide" / "presets" / "index.html").read_text("utf-8")
    for name in pf.flows.names():
        assert f'id="{name}"' in html, name


def test_readme_is_short_and_self_contained():
    readme = (ROOT / "README.md").read_text("utf-8")
    assert len(readme.splitlines()) <= 200
    for page in PAGES:
        text = page.read_text("utf-8")
        assert "../shared" not in text, f"{_name(page)} points outside the repository"
        assert "SPEC §" not in text, f"{_name(page)} cites a file that is not in the repository"


def test_every_example_is_on_the_examples_page():
    page = (ROOT / "docs" / "examples.md").read_text("utf-8")
    for script in sorted((ROOT / "examples").glob("*.py")):
        assert f"examples/{script.name}" in page, script.name
