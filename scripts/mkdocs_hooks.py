"""MkDocs hooks: serve the tutorial notebooks from ``tutorials/`` without copying them, and
render math at build time.

The notebooks live next to their jupytext sources in ``tutorials/`` (outside ``docs/``);
this hook adds each ``tutorials/*.ipynb`` to the site as ``tutorials/<name>.ipynb`` before
mkdocs-jupyter looks at the files, so the plugin renders them with their stored outputs.

Math (``$...$``/``$$...$$`` in notebook markdown cells, ``pymdownx.arithmatex`` output in
Markdown pages) is converted to MathML when each page is written (``latex2mathml``, pure
Python), so the site needs no MathJax script and shows formulas offline.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"


@event_priority(100)  # before the mkdocs-jupyter plugin wraps the notebook files
def on_files(files, config):
    for nb in sorted(TUTORIALS.glob("*.ipynb")):
        files.append(
            File(
                f"tutorials/{nb.name}",
                src_dir=str(TUTORIALS.parent),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


# -------------------------------------------------------------------------------------------
# Math rendered at build time (MathML), so formulas show offline, without a script or a CDN
# -------------------------------------------------------------------------------------------
#: A rendered notebook markdown cell (mkdocs-jupyter / nbconvert; its TeX is left as $...$),
#: up to the next cell.
_MARKDOWN_CELL = re.compile(r'<div class="[^"]*jp-RenderedMarkdown.*?(?=<div class="jp-Cell|\Z)', re.S)
#: pymdownx.arithmatex (generic mode) output in Markdown pages.
_ARITHMATEX = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*'
    r"(?:\\\((?P<inline>.*?)\\\)|\\\[(?P<block>.*?)\\\])\s*</(?P=tag)>",
    re.S,
)
#: Code and scripts, whose dollars are not math.
_CODE = re.compile(r"(<pre\b.*?</pre>|<code\b.*?</code>|<script\b.*?</script>|<style\b.*?</style>)", re.S)
_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
_INLINE = re.compile(r"(?<![\\$])\$(?!\$)((?:[^$\n]|\n(?!\s*\n))+?)(?<!\\)\$")


def tex_to_mathml(tex: str, display: bool) -> str:
    """MathML for HTML-escaped TeX ``tex`` (a block equation when ``display``)."""
    from latex2mathml.converter import convert

    return convert(html.unescape(tex).strip(), display="block" if display else "inline")


def _render_dollars(fragment: str) -> str:
    parts = _CODE.split(fragment)
    for i in range(0, len(parts), 2):  # even parts are outside code
        text = _DISPLAY.sub(lambda m: tex_to_mathml(m.group(1), True), parts[i])
        parts[i] = _INLINE.sub(lambda m: tex_to_mathml(m.group(1), False), text)
    return "".join(parts)


def render_math(page_html: str) -> str:
    """Replace the TeX of a built page by MathML (browsers render it natively)."""

    def arithmatex(m: re.Match) -> str:
        return (
            tex_to_mathml(m["inline"], False) if m["inline"] is not None else tex_to_mathml(m["block"], True)
        )

    page_html = _ARITHMATEX.sub(arithmatex, page_html)
    return _MARKDOWN_CELL.sub(lambda m: _render_dollars(m.group(0)), page_html)


def on_post_page(output, page, config):
    return render_math(output)
