"""The MkDocs hooks of castlib's documentation site (``mkdocs.yml``: ``hooks``; ``make docs``).

The site's pages sit at their repository paths, so a relative link between two of them works
the same on a code host and in the built site: ``README.md`` is the landing page
(``index.html``), ``docs/*.md`` are the hand-written pages (``docs/api/`` the API reference that
mkdocstrings generates from the docstrings), ``notebooks/00``-``07``, the tutorial's exercise
notebooks and their solutions are pages as committed (mkdocs-jupyter, not re-executed), and
``papermill_runs/results/`` is the archive: its README, every archived executed notebook as a
page, and its records and figures as files. `on_files` mounts them; it first writes the
generated pages (`castlib.repro.results_pages`: ``docs/results.md``, its figures, one page per
archived notebook folder) into ``build/docs/`` at the same paths.

Notebook pages are HTML that MkDocs does not rewrite, so `on_page_content` does for them what
MkDocs does for Markdown: a relative link to a repository file that is a page (``.md``,
``.ipynb``, a folder with an ``index.md``) points to that page's HTML; `MOVED` maps the old
report's address, which the committed notebooks still name, to the results page. It also drops
the empty MathJax ``<script src="">`` that mkdocs-jupyter writes when no MathJax address is given
(the site loads nothing from a CDN; math in a notebook shows as its TeX source).

Imports here are absolute: MkDocs loads this file by its path.
"""

from __future__ import annotations

import html as html_lib
import posixpath
import re
import shutil
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

from castlib.repro.results_pages import results_pages

__all__ = ["MOVED", "on_files", "on_page_content", "site_files"]

#: repository Markdown files shown as pages (besides docs/), at their repository paths
REPO_PAGES = (
    "README.md",
    "data/FORMAT.md",
    "benchmarks/README.md",
    "papermill_runs/results/README.md",
)
#: the notebooks shown as pages, as committed
NOTEBOOK_GLOBS = (
    "notebooks/[0-9][0-9]_*.ipynb",
    "notebooks/tutorial/[0-9][0-9]_*.ipynb",
    "notebooks/tutorial/solutions/[0-9][0-9]_*.ipynb",
)
#: figures the pages embed that live beside the notebooks (the tutorial's drawing of CAST)
FIGURE_GLOBS = ("notebooks/tutorial/figures/*.png",)
ARCHIVE = "papermill_runs/results"
GENERATED = "build/docs"
#: addresses that the committed notebooks name and that moved into the site
MOVED = {"report/index.html": "docs/results.md"}

_LINK = re.compile(r"""(?P<attr>\b(?:href|src))=(?P<q>["'])(?P<url>[^"']*)(?P=q)""")
_EMPTY_SCRIPT = re.compile(r"<script\s+src=(['\"])\1\s*>\s*</script>")
_HEADING = re.compile(r"(?P<open><h[1-6][^>]*\bid=\"[^\"]*\"[^>]*>)(?P<text>[^<]*)")


def site_files(root: str | Path, generated: str | Path) -> dict[str, Path]:
    """``{path in the site's source tree: file}`` of everything the site shows besides
    ``docs/``: `REPO_PAGES`, the notebooks and their figures, the archive (its README and every file of its config
    folders but the unkept ``figures/``) and the generated files under ``generated`` (which
    replace an archive file at the same path)."""
    root, generated = Path(root), Path(generated)
    out: dict[str, Path] = {}
    for rel in REPO_PAGES:
        if (root / rel).is_file():
            out[rel] = root / rel
    for pattern in (*NOTEBOOK_GLOBS, *FIGURE_GLOBS):
        for path in sorted(root.glob(pattern)):
            out[path.relative_to(root).as_posix()] = path
    archive = root / ARCHIVE
    for config in sorted(p for p in archive.iterdir() if p.is_dir()) if archive.is_dir() else []:
        for path in sorted(config.rglob("*")):
            rel = path.relative_to(config)
            if path.is_file() and rel.parts[0] != "figures":
                out[path.relative_to(root).as_posix()] = path
    for path in sorted(generated.rglob("*")) if generated.is_dir() else []:
        if path.is_file():
            out[path.relative_to(generated).as_posix()] = path
    return out


@event_priority(100)  # before mkdocs-jupyter turns the .ipynb files into pages
def on_files(files: Files, config: Any) -> Files:
    """Mount ``docs/`` at ``docs/`` and everything of `site_files` at its repository path,
    after writing the generated results pages into ``build/docs/``."""
    root = Path(config.config_file_path).resolve().parent
    docs_dir = Path(config.docs_dir).resolve()
    generated = root / GENERATED
    if generated.exists():
        shutil.rmtree(generated)
    results_pages(root / ARCHIVE, generated, root=root)

    def file(src_uri: str, src_dir: Path) -> File:
        return File(
            src_uri,
            src_dir=str(src_dir),
            dest_dir=config.site_dir,
            use_directory_urls=config.use_directory_urls,
        )

    out = []
    for f in files:
        in_docs = f.abs_src_path and Path(f.abs_src_path).resolve().is_relative_to(docs_dir)
        out.append(file(f"docs/{f.src_uri}", docs_dir.parent) if in_docs else f)
        if in_docs and docs_dir.parent != root:
            raise ValueError(f"docs_dir must be <repository>/docs, not {docs_dir}")
    for rel, path in site_files(root, generated).items():
        src_dir = path.parents[len(Path(rel).parts) - 1]
        out.append(file(rel, src_dir))
    return Files(out)


def _target(files: Files, here: str, url: str) -> File | None:
    """The file a relative ``url`` of the page at ``here`` (a source path) names, if any."""
    path = posixpath.normpath(posixpath.join(posixpath.dirname(here), url))
    path = MOVED.get(path, path)
    candidates = [path]
    if url.endswith("/") or "." not in posixpath.basename(path):
        candidates += [f"{path}/index.md", f"{path}/README.md"]
    for candidate in candidates:
        found = files.get_file_from_path(candidate)
        if found is not None:
            return found
    return None


def _subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(token in it for token in short)


def _fix_toc(html: str, toc: Any) -> None:
    """Point the table of contents of a notebook page at its headings' ids where they differ:
    mkdocs-jupyter's slugs leave out inline code that nbconvert's ids keep (``is_base``)."""
    ids = re.findall(r'<h[1-6][^>]*\bid="([^"]+)"', html)
    items, stack = [], list(toc)
    while stack:
        item = stack.pop(0)
        items.append(item)
        stack[:0] = list(item.children)
    for item in items:
        if item.id in ids:
            continue
        words = item.id.split("-")
        match = next((i for i in ids if _subsequence(words, i.split("-"))), None)
        if match is not None:
            item.id = match


def _jupyter_anchor(match: re.Match[str]) -> str:
    """A heading of a notebook page also answers to the anchor Jupyter and nbconvert give it
    (its text with spaces as ``-``), so a notebook's links to its own headings work on the site
    as they do in Jupyter."""
    anchor = html_lib.unescape(match["text"]).strip().replace(" ", "-")
    if not anchor:
        return match[0]
    return f'{match["open"]}<a id="{html_lib.escape(anchor, quote=True)}"></a>{match["text"]}'


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """Notebook pages: relative links to repository pages point to their HTML (see the module
    docstring), resolved from the page's folder or, for an archived notebook, from the folder of
    the notebook it was executed from (``notebooks/``); the table of contents points at the
    headings' ids; the empty MathJax script is dropped."""
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    html = _EMPTY_SCRIPT.sub("", html)
    _fix_toc(html, page.toc)
    html = _HEADING.sub(_jupyter_anchor, html)
    here = page.file.src_uri
    bases = [here]
    if here.startswith(f"{ARCHIVE}/"):
        bases.append(f"notebooks/{posixpath.basename(here)}")

    def fix(match: re.Match[str]) -> str:
        url = match["url"]
        if not url or url.startswith(("#", "/", "data:", "mailto:")) or re.match(r"\w+://", url):
            return match[0]
        path, _, fragment = url.partition("#")
        target = None
        for base in bases if path else []:
            target = _target(files, base, path)
            if target is not None:
                break
        if target is None:
            return match[0]
        new = posixpath.relpath(target.url, posixpath.dirname(page.file.url) or ".")
        new += f"#{fragment}" if fragment else ""
        return f"{match['attr']}={match['q']}{new}{match['q']}"

    return _LINK.sub(fix, html)
