"""scripts/plots_page.py: the page template `dvc plots show` fills, with the npm builds inlined."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from helpers import ROOT

spec = importlib.util.spec_from_file_location("plots_page", ROOT / "scripts" / "plots_page.py")
plots_page = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plots_page)


def fake_node_modules(folder, versions=None, code="/* {name} */ window.x = 1;"):
    versions = versions or {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}
    for name, (_, build) in plots_page.LIBRARIES.items():
        package = folder / name
        (package / build).parent.mkdir(parents=True)
        (package / "package.json").write_text(json.dumps({"name": name, "version": versions[name]}))
        (package / build).write_text(code.replace("{name}", name) + f"\n//# sourceMappingURL={name}.min.js.map\n")
    return folder


def test_the_page_inlines_each_library_and_keeps_dvcs_placeholders_but_not_its_cdn_scripts(tmp_path):
    page = plots_page.page(fake_node_modules(tmp_path))
    assert page.count("{plot_divs}") == 1 and "{refresh_tag}" in page
    assert "{scripts}" not in page  # DVC would put its CDN <script> tags there
    assert all(f"/* {name} */" in page for name in plots_page.LIBRARIES)
    assert "sourceMappingURL" not in page and "<script src" not in page
    assert "vega 5.33.1, vega-lite 5.23.0, vega-embed 6.29.0" in page
    assert 'renderer: "svg"' in page


@pytest.mark.parametrize("versions, code, message", [
    ({"vega": "6.0.0", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}, "x", "vega 6.0.0: dvc-render's templates"),
    (None, "s = '</script>'", "its build contains '</script'"),
    (None, "s = '{plot_divs}'", "its build contains '{plot_divs}'"),
])
def test_a_build_that_does_not_fit_is_refused_by_name(tmp_path, versions, code, message):
    with pytest.raises(plots_page.Missing, match=message.replace("(", r"\(")):
        plots_page.page(fake_node_modules(tmp_path, versions, code))


def test_without_the_packages_it_says_so_and_leaves_dvc_alone(tmp_path):
    (tmp_path / ".dvc").mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "plots_page.py"), str(tmp_path / "none")],
                          cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "draw only online" in proc.stdout and not (tmp_path / ".dvc" / "plots-page.html").exists()
    assert not (tmp_path / ".dvc" / "config.local").exists()
