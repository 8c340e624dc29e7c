"""The built wheel carries the Salt loader modules and tells Salt where they are."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_loader_modules_behind_the_entry_point(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(ROOT)],
        check=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("halite-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert (
            "halite = halite_core.saltext_dirs:loader_dirs" in archive.read(entry_points).decode()
        )
        archive.extractall(tmp_path / "site")
    assert "halite_core/saltext/_returners/halite.py" in names
    assert "halite_core/migrations/versions/0001_initial_schema.py" in names
    assert not any(name.startswith("salt/") for name in names)  # never shadow Salt itself
    # Installed (not from this checkout), the entry point finds the shipped returner.
    out = subprocess.run(
        [sys.executable, "-c",
         "from halite_core.saltext_dirs import loader_dirs; print(loader_dirs()['returners'][0])"],
        env={"PYTHONPATH": str(tmp_path / "site")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    returners = Path(out.stdout.strip())
    assert returners.is_relative_to(tmp_path / "site")
    assert (returners / "halite.py").is_file()
