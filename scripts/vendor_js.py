"""Refresh the page's vendored JavaScript (halite_core/static/vendor/) from the npm registry.

The console has no build step: Chart.js, its date-fns time adapter and its zoom plugin are
shipped as the packages' own minified files. For each pinned ``name@version`` below this
packs the package with ``npm pack`` into a temporary directory, checks the tarball's sha512
against the registry's ``dist.integrity`` for that version (``npm view``), copies the listed
files and the package's licence into the vendor directory, and writes vendor/README.md with
the versions, the licences and each file's sha256.

    .venv/bin/python scripts/vendor_js.py            # refresh from the pins below
    .venv/bin/python scripts/vendor_js.py --check    # only check the files against README.md

To move to a new release, change its version in PINS and run the script; the tests compare
README.md with PINS and the files with their sha256.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "halite_core" / "static" / "vendor"


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    licence: str  # the SPDX id the package declares, checked against its package.json
    # File in the package (under package/) -> name in vendor/. Empty: the licence only.
    files: dict[str, str] = field(default_factory=dict)
    licence_file: str = "LICENSE.md"
    why: str = ""


PINS: tuple[Pin, ...] = (
    Pin(
        "chart.js",
        "4.6.1",
        "MIT",
        {"dist/chart.umd.min.js": "chart.umd.min.js"},
        why="the charts (canvas; the UMD build defines the global Chart)",
    ),
    Pin(
        "chartjs-adapter-date-fns",
        "3.0.0",
        "MIT",
        {"dist/chartjs-adapter-date-fns.bundle.min.js": ("chartjs-adapter-date-fns.bundle.min.js")},
        why="Chart.js's time axis; the bundle includes date-fns 2.x",
    ),
    Pin(
        "date-fns",
        "2.19.0",
        "MIT",
        why="its licence only: the adapter's bundle above includes it (its devDependency)",
    ),
    Pin(
        "chartjs-plugin-zoom",
        "2.2.0",
        "MIT",
        {"dist/chartjs-plugin-zoom.min.js": "chartjs-plugin-zoom.min.js"},
        why="wheel and drag zoom of the timeline (pinch and pan would need hammerjs, left out)",
    ),
)


def npm(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["npm", *args], cwd=cwd, capture_output=True, text=True, check=False
    )  # fmt: skip
    if done.returncode:
        sys.exit(f"npm {' '.join(args)} failed:\n{done.stderr.strip()}")
    return done.stdout


def integrity(path: Path) -> str:
    """The tarball's Subresource Integrity string, as the registry's dist.integrity."""
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def licence_name(pin: Pin) -> str:
    return f"{pin.name}.LICENSE.md"


def fetch(pin: Pin, work: Path) -> dict[str, bytes]:
    """The vendored files of one pin, from its tarball once its sha512 is the registry's."""
    spec = f"{pin.name}@{pin.version}"
    expected = json.loads(npm("view", spec, "dist.integrity", "--json"))
    if not isinstance(expected, str) or not expected.startswith("sha512-"):
        sys.exit(f"{spec}: the registry gives no sha512 integrity ({expected!r})")
    packed = json.loads(npm("pack", spec, "--json", "--pack-destination", str(work), cwd=work))
    tarball = work / packed[0]["filename"]
    if integrity(tarball) != expected:
        sys.exit(f"{spec}: the tarball's sha512 is not the registry's dist.integrity")
    out: dict[str, bytes] = {}
    with tarfile.open(tarball, "r:gz") as archive:
        # Only the members named here are read (never extracted as paths), so a tarball
        # cannot write anywhere else.
        def member(path: str) -> bytes:
            try:
                handle = archive.extractfile(f"package/{path}")
            except KeyError:
                handle = None
            if handle is None:
                sys.exit(f"{spec}: the package has no file {path}")
            return handle.read()

        meta = json.loads(member("package.json"))
        if meta.get("version") != pin.version or meta.get("license") != pin.licence:
            sys.exit(f"{spec}: package.json says {meta.get('version')} {meta.get('license')}")
        for source, target in pin.files.items():
            out[target] = member(source)
        out[licence_name(pin)] = member(pin.licence_file)
    return out


def readme(files: dict[str, bytes]) -> str:
    lines = [
        "# Vendored JavaScript",
        "",
        "The console's charts, shipped as the packages' own minified builds (no build step).",
        "Written by `scripts/vendor_js.py` from the npm registry: each tarball is checked",
        "against the registry's sha512 (`dist.integrity`) before its files are taken. Do not",
        "edit these files; to refresh or move to a new version, change `PINS` in the script and",
        "run `.venv/bin/python scripts/vendor_js.py`.",
        "",
        "| package | version | licence | file | why |",
        "|---|---|---|---|---|",
    ]
    for pin in PINS:
        shipped = ", ".join(f"`{name}`" for name in pin.files.values()) or "-"
        lines.append(
            f"| {pin.name} | {pin.version} | {pin.licence} (`{licence_name(pin)}`) "
            f"| {shipped} | {pin.why} |"
        )
    lines += ["", "sha256 of each file:", "", "```"]
    lines += [f"{sha256(data)}  {name}" for name, data in sorted(files.items())]
    lines += ["```", ""]
    return "\n".join(lines)


def recorded(text: str) -> dict[str, str]:
    """File name -> sha256, as README.md records them."""
    return {
        name: digest for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", text, re.M)
    }  # fmt: skip


def check() -> int:
    sums = recorded((VENDOR / "README.md").read_text())
    wrong = [
        name
        for name, digest in sums.items()
        if not (VENDOR / name).is_file() or sha256((VENDOR / name).read_bytes()) != digest
    ]
    for name in wrong:
        print(f"{name}: missing or not the vendored file", file=sys.stderr)
    return 1 if wrong or not sums else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="check the files, fetch nothing")
    if parser.parse_args().check:
        return check()
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pin in PINS:
            files.update(fetch(pin, Path(tmp)))
            print(f"{pin.name}@{pin.version}: sha512 checked")
    VENDOR.mkdir(parents=True, exist_ok=True)
    keep = {*files, "README.md"}
    for old in VENDOR.iterdir():
        if old.name not in keep:  # a file an older pin shipped
            old.unlink()
    for name, data in files.items():
        (VENDOR / name).write_bytes(data)
    (VENDOR / "README.md").write_text(readme(files))
    print(f"wrote {len(files)} files and README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
