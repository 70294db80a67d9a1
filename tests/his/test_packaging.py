"""Our ``fhir`` package and fhir.resources' ``fhir`` package coexist, from the checkout and from a wheel."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMPORT_BOTH = (
    "import fhir.resources.R4B.patient as p, fhir.validation as v, fhir;"
    "print(p.Patient.__name__, v.__name__, len(fhir.__path__) >= 1)"
)


def test_both_fhir_packages_import_from_the_checkout():
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_BOTH], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Patient", "fhir.validation", "True"]


@pytest.mark.slow
@pytest.mark.backend_free  # builds and installs a wheel: the database backend plays no part
@pytest.mark.parametrize("order", ["ours-first", "theirs-first"])
def test_both_fhir_packages_import_from_an_installed_wheel(tmp_path, order):
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    wheel = next(dist.glob("vetinh-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # Only what the imports need: the full dependency set is exercised by the suite itself.
    steps = [[*pip, "--no-deps", str(wheel)], [*pip, "fhir.resources>=8"]]
    if order == "theirs-first":
        steps.reverse()
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
    # Run outside the checkout so that only the installed packages can be found.
    result = subprocess.run(
        [str(python), "-c", IMPORT_BOTH], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Patient", "fhir.validation", "True"]
    where = subprocess.run(
        [str(python), "-c", "import fhir.validation as v; print(v.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert str(env_dir) in where.stdout
