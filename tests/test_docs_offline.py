"""The documentation site works offline and formats its API signatures.

mkdocs-material loads Mermaid from unpkg.com unless a global ``mermaid`` already exists, and
Google Fonts unless ``theme.font`` is false; offline, the diagrams then show as raw text. The
site ships its own standalone Mermaid build instead (``docs/javascripts/``), and nothing in the
config or the pages may point a script, stylesheet or font at a CDN. mkdocstrings only breaks
long signatures over several lines when ruff (or black) is installed, so the ``docs`` extra
carries ruff. These checks read files only; the strict site build is CI's job.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
VENDORED_MERMAID = "javascripts/mermaid.min.js"

# A URL (with or without scheme) on a host that serves third-party scripts, styles or fonts.
CDN_URL = re.compile(
    r"(?:https?:)?//(?:[\w-]+\.)*"
    r"(?:unpkg\.com|jsdelivr\.net|cdnjs\.cloudflare\.com|googleapis\.com|gstatic\.com"
    r"|cdn\.[\w-]+\.\w+)",
    re.IGNORECASE,
)
REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
TEXT_SUFFIXES = {".md", ".html", ".css", ".js", ".txt", ".yml", ".yaml"}


class _MkdocsLoader(yaml.SafeLoader):
    """Safe YAML loader that keeps ``!!python/name:`` tags as their dotted name."""


def _python_name(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> str:
    return suffix


_MkdocsLoader.add_multi_constructor("tag:yaml.org,2002:python/name:", _python_name)


def _mkdocs_config() -> dict[str, Any]:
    with open(ROOT / "mkdocs.yml", encoding="utf-8") as handle:
        config = yaml.load(handle, Loader=_MkdocsLoader)
    assert isinstance(config, dict)
    return config


def _python_handler_options(config: dict[str, Any]) -> dict[str, Any]:
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            options = plugin["mkdocstrings"]["handlers"]["python"]["options"]
            assert isinstance(options, dict)
            return options
    raise AssertionError("mkdocs.yml configures no mkdocstrings plugin")


def _entry_path(entry: str | dict[str, Any]) -> str:
    # extra_javascript entries are either a path or a mapping with a `path` key.
    return entry if isinstance(entry, str) else str(entry["path"])


def test_mermaid_fences_are_rendered_by_the_vendored_script() -> None:
    config = _mkdocs_config()
    scripts = [_entry_path(entry) for entry in config.get("extra_javascript", [])]
    assert VENDORED_MERMAID in scripts, f"extra_javascript: expected {VENDORED_MERMAID}"
    vendored = DOCS / VENDORED_MERMAID
    assert vendored.is_file(), f"missing {vendored}"
    data = vendored.read_bytes()
    # The standalone (IIFE) build, not an ES module: it must set the global material looks for.
    assert len(data) > 1_000_000, f"{vendored} holds only {len(data)} bytes"
    assert b'globalThis["mermaid"]' in data[-500:], f"{vendored} does not define `mermaid`"
    license_text = (vendored.parent / "mermaid.LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in license_text and "Permission is hereby granted" in license_text
    # The diagrams stay Mermaid sources in the pages, fenced the way material renders them.
    fences = config["markdown_extensions"]
    superfences = next(
        ext for ext in fences if isinstance(ext, dict) and "pymdownx.superfences" in ext
    )
    names = [fence["name"] for fence in superfences["pymdownx.superfences"]["custom_fences"]]
    assert "mermaid" in names
    for page in sorted((DOCS / "systems").glob("*.md")):
        assert "```mermaid\n" in page.read_text(encoding="utf-8"), f"{page.name}: no diagram"


def test_theme_uses_system_fonts() -> None:
    theme = _mkdocs_config()["theme"]
    assert theme.get("font") is False, f"theme.font: expected false, got {theme.get('font')!r}"


def test_no_script_style_or_font_comes_from_a_cdn() -> None:
    config = _mkdocs_config()
    for key in ("extra_javascript", "extra_css"):
        for entry in config.get(key, []):
            path = _entry_path(entry)
            assert not REMOTE.match(path), f"{key}: expected a path under docs/, got {path}"
    sources = [ROOT / "mkdocs.yml"]
    sources += [
        path
        for path in sorted(DOCS.rglob("*"))
        if path.suffix in TEXT_SUFFIXES and path != DOCS / VENDORED_MERMAID
    ]
    for source in sources:
        found = CDN_URL.findall(source.read_text(encoding="utf-8"))
        assert not found, f"{source.relative_to(ROOT)} references a CDN: {found}"


def test_cdn_pattern_catches_the_urls_material_would_use() -> None:
    for url in (
        "https://unpkg.com/mermaid@11/dist/mermaid.min.js",
        "//cdn.jsdelivr.net/npm/mermaid@11/dist/mermaid.min.js",
        "https://fonts.googleapis.com/css?family=Roboto",
        "https://cdn.example.org/lib.js",
    ):
        assert CDN_URL.search(url), url
    assert not CDN_URL.search("javascripts/mermaid.min.js")
    assert REMOTE.match("https://unpkg.com/x.js") and REMOTE.match("//unpkg.com/x.js")
    assert not REMOTE.match(VENDORED_MERMAID)


def test_api_signatures_are_formatted() -> None:
    options = _python_handler_options(_mkdocs_config())
    assert options.get("separate_signature") is True
    assert options.get("show_signature_annotations") is True
    line_length = options.get("line_length")
    assert isinstance(line_length, int) and 40 <= line_length <= 80, (
        f"line_length: expected an int in [40, 80], got {line_length!r}"
    )
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as handle:
        extras = tomllib.load(handle)["project"]["optional-dependencies"]
    formatters = [req for req in extras["docs"] if re.match(r"(ruff|black)\b", req)]
    assert formatters, f"docs extra: expected ruff or black, got {extras['docs']}"
