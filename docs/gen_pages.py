"""Writes the generated reference pages into the site at build time (mkdocs-gen-files)."""

import mkdocs_gen_files

from lmlab.docgen import PAGES

for path, render in PAGES.items():
    with mkdocs_gen_files.open(path, "w") as page:
        page.write(render())
