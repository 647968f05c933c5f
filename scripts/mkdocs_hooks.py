"""MkDocs hooks: serve the tutorial notebooks from ``tutorials/`` without copying them.

The notebooks live next to their jupytext sources in ``tutorials/`` (outside ``docs/``);
this hook adds each ``tutorials/*.ipynb`` to the site as ``tutorials/<name>.ipynb`` before
mkdocs-jupyter looks at the files, so the plugin renders them with their stored outputs.
"""

from __future__ import annotations

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
