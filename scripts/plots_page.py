"""Write the page `dvc plots show` fills, with vega, vega-lite and vega-embed inlined: it draws offline.

    make plots-page                                                  # npm-installs the three, then:
    python scripts/plots_page.py .venv/node/node_modules .dvc/plots-page.html

DVC's own page loads the three libraries from a CDN, so offline only the pictures (PNG)
draw. This copies them, as npm installed them (the Makefile pins the versions), into a
page template, and names it in .dvc/config.local (`plots.html_template`, relative to
.dvc/), after which `dvc plots show` and `dvc plots diff` need no network. Without the
packages (no npm) it says so and changes nothing: DVC's own page draws when online.
Run from the repository's top folder. Back to DVC's own page:
`dvc config --local --unset plots.html_template` (docs/plots.md).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from fmnist.core.errors import PipelineError, run
from fmnist.core.io import write_text

# The majors dvc-render's templates and its own page are written for (vega@5, vega-lite@5,
# vega-embed@6); each file is the package's browser build.
LIBRARIES = {"vega": (5, "build/vega.min.js"), "vega-lite": (5, "build/vega-lite.min.js"),
             "vega-embed": (6, "build/vega-embed.min.js")}
# What dvc-render replaces in a template: {plot_divs} must be there; {scripts} must not,
# or DVC would add its CDN <script> tags.
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {versions}: inlined by scripts/plots_page.py (BSD-3-Clause, (c) the University of Washington
         Interactive Data Lab), so that this page draws with no network. -->
{scripts_inline}
    <script>
    // SVG rather than vega-embed's default canvas: sharp at any zoom, its text selectable,
    // and each chart's marks are elements (tests/e2e/test_plots.py counts them).
    window.vegaEmbed = (function (embed) {
        function svgEmbed(el, spec, options) {
            return embed(el, spec, Object.assign({renderer: "svg"}, options));
        }
        return Object.assign(svgEmbed, embed);
    })(window.vegaEmbed);
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


class Missing(Exception):
    pass


def library(node_modules: Path, name: str) -> tuple[str, str]:
    """(version, browser build without its source-map comment) of one npm package."""
    major, build = LIBRARIES[name]
    try:
        version = json.loads((node_modules / name / "package.json").read_text())["version"]
        code = (node_modules / name / build).read_text(encoding="utf-8")
    except (OSError, ValueError, KeyError) as exc:
        raise Missing(f"{name}: {exc}") from None
    if int(version.split(".")[0]) != major:
        raise Missing(f"{name} {version}: dvc-render's templates are written for {name}@{major}")
    # The page is written to another folder than node_modules: no .map beside it to fetch.
    code = re.sub(r"^//# sourceMappingURL=.*$", "", code, flags=re.M)
    for text in (*PLACEHOLDERS, "</script"):
        if text in code:  # would end the <script> element, or be replaced by DVC
            raise Missing(f"{name} {version}: its build contains {text!r}, which can't be inlined")
    return version, code


def page(node_modules: Path) -> str:
    """The page template, each library inlined in a <script> of its own."""
    found = {name: library(node_modules, name) for name in LIBRARIES}
    versions = ", ".join(f"{name} {version}" for name, (version, _) in found.items())
    scripts = "\n".join(f"    <script>\n{code.strip()}\n    </script>" for _, code in found.values())
    # str.replace, not format: the page's CSS and script hold braces of their own.
    return PAGE.replace("{versions}", versions).replace("{scripts_inline}", scripts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("node_modules", type=Path, help="where npm installed vega, vega-lite and vega-embed")
    parser.add_argument("out", type=Path, nargs="?", default=Path(".dvc/plots-page.html"),
                        help="the page template to write, inside .dvc/ (default: .dvc/plots-page.html)")
    args = parser.parse_args()
    dvc_dir = Path(".dvc")
    if not dvc_dir.is_dir():
        raise PipelineError("no .dvc folder here; run from the repository's top folder")
    if args.out.resolve().parent != dvc_dir.resolve():
        raise PipelineError(f"{args.out}: the page goes straight into .dvc/ (the config names it relative to .dvc/)")
    try:
        text = page(args.node_modules)
    except Missing as exc:
        print(f"note: no offline page for `dvc plots show` ({exc}); its charts load vega from a CDN and draw only "
              f"online (npm install vega@5 vega-lite@5 vega-embed@6 --prefix {args.node_modules.parent} makes one)")
        return
    write_text(args.out, text)
    config = subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "plots.html_template", args.out.name],
                            capture_output=True, text=True)
    if config.returncode:
        raise PipelineError(f"dvc config --local plots.html_template {args.out.name}: {config.stderr.strip()}")
    print(f"wrote {args.out} ({len(text.encode()) // 1024} KiB, {text.count('<script>') - 1} libraries inlined); "
          f"dvc plots show uses it (.dvc/config.local: plots.html_template)")


if __name__ == "__main__":
    run(main)
