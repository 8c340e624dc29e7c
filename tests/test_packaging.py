"""The built wheel is the distribution saltext-halite: it carries the Salt loader modules and
tells Salt where they are."""

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

# The same over either database: run once, in the SQLite pass.
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parents[1]
# What a build would leave in the checkout it runs in; the copy below keeps it out.
BUILD_LEFTOVERS = (".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
                   ".hypothesis", ".demo", ".schemathesis", "*.db", "*.db-*")  # fmt: skip


def build_wheel(tmp_path):
    """Builds the wheel from a copy of the checkout: pip builds in the source tree (its
    ``build/`` and ``*.egg-info``), and the suite writes only into temporary directories."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*BUILD_LEFTOVERS))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(source)],
        check=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    return wheel


def test_wheel_ships_loader_modules_behind_the_entry_point(tmp_path):
    wheel = build_wheel(tmp_path)
    # `pip install halite` is SaltStack's 2014 Web UI: this one is named as Salt
    # extensions are (saltext-*), its import package and loader names stay halite.
    assert wheel.name.startswith("saltext_halite-")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        assert Parser().parsestr(archive.read(metadata).decode())["Name"] == "saltext-halite"
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert (
            "halite = halite_core.saltext_dirs:loader_dirs" in archive.read(entry_points).decode()
        )
        archive.extractall(tmp_path / "site")
    assert "halite_core/saltext/_returners/halite.py" in names
    assert "halite_core/store/migrations/versions/0001_initial_schema.py" in names
    assert not any(name.startswith("salt/") for name in names)  # never shadow Salt itself
    # The console's vendored charting libraries, their licences and README go with it.
    vendored = {p.name for p in (ROOT / "halite_core/static/vendor").iterdir()}
    assert {"chart.umd.min.js", "chartjs-plugin-zoom.min.js", "README.md"} <= vendored
    assert {f"halite_core/static/vendor/{name}" for name in vendored} <= names
    assert {"halite_core/static/index.html", "halite_core/static/charts.js"} <= names
    # Installed (not from this checkout), the entry point finds the shipped returner.
    out = subprocess.run(
        [sys.executable, "-c",
         "from importlib.metadata import entry_points\n"
         "(ep,) = [e for e in entry_points(group='salt.loader') if e.dist.name == "
         "'saltext-halite']\n"
         "print(ep.name, ep.load()()['returners'][0])"],
        env={"PYTHONPATH": str(tmp_path / "site")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    name, returners = out.stdout.split()
    assert name == "halite"
    assert Path(returners).is_relative_to(tmp_path / "site")
    assert (Path(returners) / "halite.py").is_file()
