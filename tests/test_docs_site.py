"""The documentation site (`make docs`): built with MkDocs from the repository, every internal link
of it checked, nothing loaded from another host, and four pages and the search opened in headless
Chromium, with screenshots kept under test-artifacts/.

The build (``mkdocs build --strict``) also fails on a Markdown link to a missing page or anchor
and on a docstring that mkdocstrings cannot read; the link walk below covers what MkDocs does not
check: the HTML of the notebook pages, the theme's assets, the generated results pages.
"""

from __future__ import annotations

import base64
import os
import posixpath
import re
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"

pytest.importorskip("mkdocs", reason="the docs extra is not installed (make setup installs it)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return out


class _Refs(HTMLParser):
    """The ids of a page and the URLs it refers to: (tag, attribute, url)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in ("id", "name") and tag != "meta":
                self.ids.add(value)
            elif name in ("href", "src") and tag in (
                "a",
                "link",
                "script",
                "img",
                "iframe",
                "source",
            ):
                self.refs.append((tag, name, value))


def _parse(path: Path) -> _Refs:
    parser = _Refs()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def _broken_links(site: Path) -> tuple[list[str], list[str], int]:
    """(broken internal links, assets from another host, number of links checked) of every
    HTML file of ``site``."""
    # 404.html is for a web server (its links are absolute, from the server's root); from the
    # file system no link leads to it
    pages = {p: _parse(p) for p in site.rglob("*.html") if p.name != "404.html"}
    broken, remote, checked = [], [], 0
    for page, refs in pages.items():
        where = page.relative_to(site).as_posix()
        for tag, attr, url in refs.refs:
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") or url.startswith("//"):
                if tag != "a":
                    remote.append(f"{where}: <{tag} {attr}={url}>")
                continue
            if parts.scheme in ("data", "mailto", "javascript", "blob") or url == "#":
                continue
            checked += 1
            if parts.scheme or url.startswith("/"):
                broken.append(f"{where}: {url} (not relative: it breaks from file://)")
                continue
            target = page if not parts.path else page.parent / unquote(parts.path)
            target = Path(posixpath.normpath(target.as_posix()))
            if target.is_dir():
                broken.append(f"{where}: {url} (a folder: file:// shows no index.html)")
                continue
            if not target.is_file():
                broken.append(f"{where}: {url} (no such file)")
                continue
            fragment = unquote(parts.fragment)
            if fragment and tag == "a" and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if fragment not in ids:
                    broken.append(f"{where}: {url} (no id {fragment!r} there)")
    return broken, remote, checked


def test_every_internal_link_of_the_site_resolves(site: Path) -> None:
    broken, remote, checked = _broken_links(site)
    assert checked > 1000, f"only {checked} links checked: is the site built?"
    assert not broken, f"{len(broken)} broken link(s):\n" + "\n".join(broken[:40])
    assert not remote, "assets loaded from another host:\n" + "\n".join(remote[:40])


def test_the_link_walk_catches_a_broken_link(site: Path, tmp_path: Path) -> None:
    """The walk is not vacuous: a page with a dead link, a missing anchor and a CDN script
    is reported."""
    copy = tmp_path / "site"
    (copy / "docs").mkdir(parents=True)
    shutil.copy(site / "index.html", copy / "index.html")
    (copy / "docs" / "bad.html").write_text(
        '<a href="../index.html#no-such-id">x</a><a href="gone.html">y</a>'
        '<script src="https://cdn.example/x.js"></script><img src="../docs">',
        encoding="utf-8",
    )
    broken, remote, _ = _broken_links(copy)
    bad = [b for b in broken if b.startswith("docs/bad.html")]
    assert any("no id 'no-such-id'" in b for b in bad)
    assert any("gone.html (no such file)" in b for b in bad)
    assert any("(a folder" in b for b in bad)
    assert remote == ["docs/bad.html: <script src=https://cdn.example/x.js>"]


def test_site_has_every_page_the_issue_names(site: Path) -> None:
    for page in (
        "index.html",
        "docs/getting-started.html",
        "docs/method.html",
        "docs/api/castlib.html",
        "docs/api/methods.html",
        "docs/results.html",
        "docs/tutorial.html",
        "search/search_index.js",
    ):
        assert (site / page).is_file(), page
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    notebooks += sorted((ROOT / "notebooks" / "tutorial").rglob("[0-9][0-9]_*.ipynb"))
    assert len(notebooks) == 14
    for nb in notebooks:
        assert (site / nb.relative_to(ROOT).with_suffix(".html")).is_file(), nb
    # every archived executed notebook is a page, linked from the results page
    results = (site / "docs" / "results.html").read_text(encoding="utf-8")
    archived = sorted((ROOT / "papermill_runs" / "results").glob("*/*/*/*.ipynb"))
    assert archived
    for nb in archived:
        rel = nb.relative_to(ROOT).with_suffix(".html").as_posix()
        assert (site / rel).is_file(), rel
        assert f'href="../{quote(rel)}"' in results, f"the results page does not link {rel}"
    # every public name of castlib and castlib.methods has its entry in the API pages
    import castlib
    import castlib.methods

    for module, page in ((castlib, "castlib"), (castlib.methods, "methods")):
        html = (site / "docs" / "api" / f"{page}.html").read_text(encoding="utf-8")
        for name in module.__all__:
            # a function named like its module (castlib.steer) is listed under the module's path
            # (or, when the module shadows it, under the path it is defined at:
            # castlib.evaluate is castlib.scoring.evaluation.evaluate)
            ids = {f"{module.__name__}.{name}", f"{module.__name__}.{name}.{name}"}
            home = getattr(getattr(module, name), "__module__", None)
            if isinstance(home, str):
                ids.add(f"{home}.{name}")
            assert any(f'id="{i}"' in html for i in ids), f"{module.__name__}.{name}"


# --------------------------------------------------------------------------- browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def _browse(url: str, profile: Path, shot: Path | None = None) -> str:
    browser = _chromium()
    assert browser is not None
    common = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,2000",
        "--virtual-time-budget=15000",  # let the page's scripts (search) run
    ]
    dom = subprocess.run(
        [*common, "--dump-dom", url], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    if shot is not None:
        subprocess.run(
            [*common, f"--screenshot={shot}", url], capture_output=True, timeout=300, check=True
        )
        assert shot.stat().st_size > 0, f"no screenshot of {url}"
    return dom


def _loaded_images(dom: str, page: Path) -> list[tuple[str, int, int]]:
    """(src, width, height) of every <img> of a rendered page, read from the file or data URL
    the browser loaded."""
    out = []
    for src in re.findall(r'<img[^>]*\bsrc="([^"]+)"', dom):
        if src.startswith("data:image/png;base64,"):
            data = base64.b64decode(src.split(",", 1)[1])
        elif src.startswith("data:"):
            continue
        else:
            data = (page.parent / unquote(urlsplit(src).path)).read_bytes()
        w, h = _png_size(data)
        out.append((src[:80], w, h))
    return out


@pytest.mark.skipif(
    _chromium() is None,
    reason="headless Chromium is not installed (Debian: apt-get install chromium; .ci/run does)",
)
def test_site_in_headless_chromium(site: Path, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pages = {
        "site_landing": "index.html",
        "site_api_castlib": "docs/api/castlib.html",
        "site_notebook_02": "notebooks/02_cross_domain.html",
        "site_results": "docs/results.html",
    }
    doms = {}
    for name, rel in pages.items():
        shot = ARTIFACTS / f"{name}.png"
        doms[name] = _browse((site / rel).as_uri(), tmp_path / f"profile-{name}", shot)
        print(f"screenshot: {shot}")

    # the landing page: the README with its main table's rows (generated from the archive)
    landing = doms["site_landing"]
    assert "Two commands" in landing and "quickstart" in landing
    for target in ("arc_challenge", "financial_phrasebank", "nusax_senti_jav", "sib200_yor"):
        assert re.search(rf"<td[^>]*>{target}</td>", landing), f"main table row {target}"
    # an API page: entries rendered from the docstrings
    api = doms["site_api_castlib"]
    for name in ("load_model", "steer.steer", "SteeringVector", "evaluate_sweep"):
        assert f'id="castlib.{name}"' in api, name
    assert "A causal LM with what castlib needs to read and steer its residual stream" in api
    # a notebook page: its cells and outputs, as committed, and the figure it shows
    notebook = doms["site_notebook_02"]
    assert "What the paper claims" in notebook and "jp-OutputArea" in notebook
    sizes = _loaded_images(notebook, site / pages["site_notebook_02"])
    assert sizes and all(w > 50 and h > 50 for _, w, h in sizes), sizes
    # the results page: tables, claims and every figure loaded
    results = doms["site_results"]
    assert "The paper's claims, judged from the records" in results
    assert re.search(r"<td[^>]*>social_iqa</td>", results)
    sizes = _loaded_images(results, site / pages["site_results"])
    assert len(sizes) >= 5, sizes
    assert all(w > 50 and h > 50 for _, w, h in sizes), sizes

    # search works from file:// (Material's offline search, no server, no CDN)
    found = _browse((site / "index.html").as_uri() + "?q=steering", tmp_path / "profile-search")
    count = re.search(r'md-search-result__meta">(\d+) matching document', found)
    assert count and int(count.group(1)) > 0, "the offline search found nothing"
