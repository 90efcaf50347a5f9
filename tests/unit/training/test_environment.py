"""The lock (requirements/, written by `make lock`): it agrees with pyproject.toml on every
platform and Python it covers, .venv holds exactly it, runtime-versions.txt (the stages' DVC
dependency) follows the runtime part alone, and fmnist.training.environment describes an environment.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from fmnist.core.errors import DataError
from fmnist.training import environment
from helpers import ROOT

spec = importlib.util.spec_from_file_location("lock_script", ROOT / "scripts" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)

TEST_LOCK, RUNTIME_LOCK, PIP_LOCK, VERSIONS = (ROOT / path for path in (
    lock.TEST_LOCK, lock.RUNTIME_LOCK, lock.PIP_LOCK, lock.VERSIONS))
# What users run: the platforms and Pythons the lock must cover (`make lock` resolves for all).
PLATFORMS = {
    "linux-x86_64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                     "os_name": "posix"},
    "linux-aarch64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64",
                      "os_name": "posix"},
    "macos-arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64",
                    "os_name": "posix"},
    "windows-amd64": {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64",
                      "os_name": "nt"},
}
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
ENVIRONMENTS = {
    f"{name} py{python}": {**marks, "python_version": python, "python_full_version": f"{python}.0",
                           "implementation_name": "cpython", "platform_python_implementation": "CPython",
                           "implementation_version": f"{python}.0", "platform_release": "", "platform_version": "",
                           "extra": ""}
    for name, marks in PLATFORMS.items() for python in PYTHONS
}
SAMPLE = """\
# pyproject.toml's requires-python, dependencies and build requires, sha256: {digest}
numpy==2.2.6 ; python_full_version < '3.11' \\
    --hash=sha256:{h1} \\
    --hash=sha256:{h2}
    # via
    #   -c requirements/test.txt
    #   fmnist (pyproject.toml)
    #   torch
numpy==2.4.6 ; python_full_version >= '3.11' \\
    --hash=sha256:{h1}
    # via fmnist (pyproject.toml)
optuna==4.5.0 \\
    --hash=sha256:{h2}
    # via fmnist (pyproject.toml)
sympy==1.14.0 \\
    --hash=sha256:{h1}
    # via torch
torch==2.14.1 \\
    --hash=sha256:{h1}
    # via
    #   -c requirements/test.txt
    #   fmnist (pyproject.toml)
""".format(digest="0" * 64, h1="1" * 64, h2="2" * 64)


def pyproject() -> dict:
    return lock.read_pyproject(ROOT / "pyproject.toml")


def pins_for(path: Path, env: dict) -> dict[str, str]:
    return environment.locked(path, env)


# --- the lock agrees with pyproject.toml ------------------------------------------

@pytest.mark.parametrize("path, extras", [(TEST_LOCK, ("test",)), (RUNTIME_LOCK, ())], ids=["test", "runtime"])
def test_the_lock_was_resolved_from_pyproject_tomls_current_lists(path, extras):
    recorded = lock.recorded_digest(path.read_text(encoding="utf-8"))
    assert recorded == lock.inputs_digest(lock.lock_inputs(pyproject(), extras)), \
        f"pyproject.toml's dependencies changed since {path.relative_to(ROOT)} was written: run `make lock`"


@pytest.mark.parametrize("where", ENVIRONMENTS)
def test_every_requirement_is_pinned_once_within_its_range(where):
    env = ENVIRONMENTS[where]
    project = pyproject()
    runtime_reqs = project["project"]["dependencies"] + project["build-system"]["requires"] + lock.INSTALLER
    test_reqs = runtime_reqs + project["project"]["optional-dependencies"]["test"]
    for path, requirements in ((RUNTIME_LOCK, runtime_reqs), (TEST_LOCK, test_reqs)):
        pins = pins_for(path, env)  # raises if a package is pinned twice for one platform
        for line in requirements:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate(env):
                continue
            version = pins.get(environment.canonical(requirement.name))
            assert version is not None, f"{path.name} pins no {requirement.name} on {where}: run `make lock`"
            assert requirement.specifier.contains(version, prereleases=True), \
                f"{path.name} pins {requirement.name} {version}, pyproject.toml asks for {requirement}: run `make lock`"
    assert "torch" in pins_for(RUNTIME_LOCK, env) and "pytest" not in pins_for(RUNTIME_LOCK, env)


@pytest.mark.parametrize("where", ENVIRONMENTS)
def test_the_runtime_lock_is_the_test_locks_runtime_part_at_the_same_versions(where):
    env = ENVIRONMENTS[where]
    runtime, test = pins_for(RUNTIME_LOCK, env), pins_for(TEST_LOCK, env)
    assert {name: test.get(name) for name in runtime} == runtime
    assert pins_for(PIP_LOCK, env) == {"pip": runtime["pip"]}


def test_runtime_versions_is_the_runtime_locks_pins_for_the_stages():
    assert VERSIONS.read_text(encoding="utf-8") == lock.stage_versions(RUNTIME_LOCK.read_text(encoding="utf-8")), \
        f"{VERSIONS.relative_to(ROOT)} is not what {RUNTIME_LOCK.relative_to(ROOT)} gives: run `make lock`"


def _third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    tops = {name.split(".")[0] for name in names}
    return {top for top in tops if top not in sys.stdlib_module_names and top not in ("fmnist", "stages")}


def _distributions_of(module: str, known: dict[str, list[str]]) -> list[str]:
    """The distributions that install top-level `module`. Python 3.10's packages_distributions()
    misses those without top_level.txt (scikit-learn's): their RECORD files tell."""
    return known.get(module) or [dist.metadata["Name"] for dist in metadata.distributions()
                                 if re.search(rf"(?m)^{re.escape(module)}[/.]", dist.read_text("RECORD") or "")]


def test_runtime_versions_holds_every_package_the_stages_import():
    """dvc.yaml lists each stage's modules (tests/test_pipeline.py checks that); the packages they
    import must be in the file those stages depend on, or a new release of one would go unseen."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    versions = {name for name, _, _ in environment.read_lock(VERSIONS)}
    known = metadata.packages_distributions()
    for name, stage in stages.items():
        if "${runtime_versions}" not in stage["deps"]:
            continue
        for dep in (d for d in stage["deps"] if d.endswith(".py")):
            for module in _third_party_imports(ROOT / dep):
                for dist in _distributions_of(module, known) or [module]:
                    assert environment.canonical(dist) in versions, \
                        f"{dep} (stage {name}) imports {module}; add {dist} to STAGE_PACKAGES in scripts/lock.py"


def test_dvc_yaml_makes_the_stages_that_use_packages_depend_on_their_versions():
    variables = yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"][0]
    assert variables["runtime_versions"] == str(lock.VERSIONS)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    marked = {name for name, stage in stages.items() if "${runtime_versions}" in stage["deps"]}
    # download only checks and copies bytes (torchvision is its way to the internet, nothing more).
    assert marked == set(stages) - {"download"}


def test_runtime_versions_follows_what_the_stage_packages_need_and_nothing_else():
    text = lock.stage_versions(SAMPLE, roots=("numpy", "torch"))
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    # sympy comes with torch; optuna, though a runtime dependency, is imported by no stage.
    assert lines == ["numpy==2.2.6 ; python_full_version < '3.11'", "numpy==2.4.6 ; python_full_version >= '3.11'",
                     "sympy==1.14.0", "torch==2.14.1"]
    with pytest.raises(lock.PipelineError, match="doesn't pin onnx"):
        lock.stage_versions(SAMPLE, roots=("numpy", "onnx"))


def test_the_tests_workflow_installs_the_lock_and_runs_the_unit_tests_on_macos_too():
    jobs = yaml.safe_load((ROOT / ".github/workflows/test.yml").read_text())["jobs"]
    for job in jobs.values():
        runs = "\n".join(step.get("run", "") for step in job["steps"])
        assert "make test" in runs or "make .venv/.installed-test" in runs  # the Makefile installs the lock
        setup = next(step for step in job["steps"] if step.get("uses", "").startswith("actions/setup-python"))
        assert setup["with"]["cache-dependency-path"] == str(lock.TEST_LOCK)
    macos = [job for job in jobs.values() if job["runs-on"].startswith("macos")]
    assert len(macos) == 1
    assert '.venv/bin/python -m pytest -m "not e2e"' in "\n".join(step.get("run", "") for step in macos[0]["steps"])


# --- fmnist.training.environment -----------------------------------------------------------

def test_read_lock_takes_each_pin_with_its_marker_and_drops_hashes_and_comments(tmp_path):
    path = tmp_path / "lock.txt"
    path.write_text(SAMPLE)
    assert environment.read_lock(path)[:2] == [("numpy", "2.2.6", "python_full_version < '3.11'"),
                                               ("numpy", "2.4.6", "python_full_version >= '3.11'")]
    assert environment.locked(path, ENVIRONMENTS["linux-x86_64 py3.10"])["numpy"] == "2.2.6"
    assert environment.locked(path, ENVIRONMENTS["macos-arm64 py3.12"])["numpy"] == "2.4.6"


@pytest.mark.parametrize("text, expected", [
    ("numpy>=2 \\\n    --hash=sha256:" + "1" * 64 + "\n", "pin 1 is not `name==version ; marker`"),
    ("numpy==1.0\nnumpy==2.0\n", "pins numpy twice for this platform"),
    (b"\xff\xfe", "not UTF-8 text"),
])
def test_a_damaged_lock_is_named_with_what_is_wrong(tmp_path, text, expected):
    path = tmp_path / "lock.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError, match=re.escape(expected)) as caught:
        environment.locked(path)
    assert str(path) in str(caught.value)


def test_differences_name_what_is_extra_missing_or_another_version(tmp_path, monkeypatch):
    path = tmp_path / "lock.txt"
    path.write_text("numpy==2.4.6\ntorch==2.14.1\npip==26.3\n")
    monkeypatch.setattr(environment, "installed", lambda: {"numpy": "2.4.6", "torch": "2.13.0", "six": "1.17.0",
                                                          "fmnist": "0.1.0"})
    monkeypatch.setattr(environment, "unmet_requirements", lambda pins, extras=(): [])
    assert environment.differences(path) == [
        "six 1.17.0 is installed, the lock doesn't list it",
        "pip: the lock pins 26.3, it isn't installed",
        "torch: the lock pins 2.14.1, 2.13.0 is installed",
    ]


def test_a_requirement_the_lock_lacks_or_breaks_asks_for_make_lock(monkeypatch):
    monkeypatch.setattr(environment.metadata, "requires", lambda name: [
        "torch==2.14.1", "numpy<3,>=2.5", "optuna>=4", 'pytest<10,>=8; extra == "test"', 'boto3; extra == "s3"'])
    pins = {"torch": "2.14.1", "numpy": "2.4.6"}
    assert environment.unmet_requirements(pins) == [
        "pyproject.toml asks for numpy<3,>=2.5, the lock pins 2.4.6: run `make lock`",
        "pyproject.toml asks for optuna>=4, the lock doesn't pin it: run `make lock`",
    ]
    assert environment.unmet_requirements(pins, ("test",))[-1] == \
        "pyproject.toml asks for pytest<10,>=8; extra == \"test\", the lock doesn't pin it: run `make lock`"


@pytest.mark.skipif(Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
                    reason="checks the repository's own .venv, which `make test` installs")
def test_this_venv_holds_exactly_the_test_lock():
    assert environment.differences(TEST_LOCK, ("test",)) == []


def test_describe_names_python_torch_platform_and_the_locks_digest(tmp_path):
    path = tmp_path / "runtime.txt"
    path.write_text(SAMPLE)
    described = environment.describe(path)
    assert described == {
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "platform": f"{sys.platform}-{platform.machine().lower()}",
        "lock": path.as_posix(),
        "lock_sha256": hashlib.sha256(SAMPLE.encode()).hexdigest(),
    }
    path.write_text(SAMPLE.replace("torch==2.14.1", "torch==2.14.2"))
    assert environment.describe(path)["lock_sha256"] != described["lock_sha256"]
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'missing.txt'}: can't be read")):
        environment.describe(tmp_path / "missing.txt")


def test_environment_imports_only_the_standard_library():
    """fmnist.training.environment imports no third-party package (a model card is written in stages
    that shouldn't pay for packaging's import, nor depend on it)."""
    tree = ast.parse((ROOT / "fmnist" / "training" / "environment.py").read_text())
    top = {n.names[0].name.split(".")[0] for n in tree.body if isinstance(n, ast.Import)}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert top <= set(sys.stdlib_module_names) | {"fmnist", "__future__"}
    assert len(environment.describe(RUNTIME_LOCK)["lock_sha256"]) == 64
