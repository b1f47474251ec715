"""Builds the Python bridge's sdist and wheel as `python -m build` does, from
a copy of bridges/python (nothing is written into the source tree), and
checks what a user installs: the licence texts and the SPDX licence in both
archives, and the `snakepit-python-worker` console script answering a ping.

Usage: python3 python_package.py BRIDGES_PYTHON_DIR [OLDER_PYTHON ...]

Each OLDER_PYTHON installs the wheel built here and runs its script too.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile

LICENCE = "MIT OR Apache-2.0"
LICENCE_FILES = ("LICENSE-MIT", "LICENSE-APACHE")
SCRIPT = "snakepit-python-worker = snakepit_bridge.generic:main"


def fail(message):
    sys.exit(f"python package: {message}")


def pip(*args, python=sys.executable):
    subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", "--quiet", *args],
        check=True,
    )


def check_sdist(path):
    with tarfile.open(path) as tar:
        names = tar.getnames()
        top = names[0].split("/")[0]
        for name in LICENCE_FILES:
            if f"{top}/{name}" not in names:
                fail(f"{os.path.basename(path)} lacks {name}")
        pkg_info = tar.extractfile(f"{top}/PKG-INFO").read().decode()
    if f"License-Expression: {LICENCE}" not in pkg_info:
        fail(f"the sdist's PKG-INFO does not say License-Expression: {LICENCE}")


def check_wheel(path):
    with zipfile.ZipFile(path) as whl:
        names = whl.namelist()
        info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        for name in LICENCE_FILES:
            if f"{info}/licenses/{name}" not in names:
                fail(f"{os.path.basename(path)} lacks {info}/licenses/{name}")
        metadata = whl.read(f"{info}/METADATA").decode()
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    if f"License-Expression: {LICENCE}" not in metadata:
        fail(f"the wheel's METADATA does not say License-Expression: {LICENCE}")
    if SCRIPT not in entry_points:
        fail(f"the wheel declares no console script `{SCRIPT}`")


def frames(data):
    out, pos = [], 0
    while pos + 4 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        out.append(json.loads(data[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    return out


def check_script(wheel, tmp, python=sys.executable):
    """The wheel installed by `python`'s pip: its console script (run by
    that interpreter) answers a ping."""
    site = os.path.join(tmp, "site-" + os.path.basename(os.path.dirname(os.path.dirname(python))))
    pip("install", "--no-deps", "--target", site, wheel, python=python)
    script = os.path.join(site, "bin", "snakepit-python-worker")
    request = json.dumps({"id": 1, "command": "ping", "args": {}}).encode()
    env = dict(os.environ, PYTHONPATH=site, SNAKEPIT_CODEC="json")
    done = subprocess.run(
        [script],
        input=struct.pack(">I", len(request)) + request,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        fail(f"{script} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    replies = [m for m in frames(done.stdout) if m.get("id") == 1]
    if not replies or replies[0].get("success") is not True:
        fail(f"{script} did not answer the ping: {frames(done.stdout)!r}")


def main():
    source = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="snakepit-python-package-") as tmp:
        copy = os.path.join(tmp, "src")
        shutil.copytree(
            source,
            copy,
            ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "tests"),
        )
        # `build` itself, if this Python lacks it; it builds in an isolated
        # environment with the setuptools pyproject.toml asks for, as pip
        # does for a user.
        tools = os.path.join(tmp, "tools")
        try:
            import build  # noqa: F401
        except ImportError:
            pip("install", "--target", tools, "build")
        env = dict(os.environ, PYTHONPATH=tools)
        dist = os.path.join(tmp, "dist")
        subprocess.run(
            [sys.executable, "-m", "build", "--outdir", dist, copy],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        built = sorted(os.listdir(dist))
        sdists = [f for f in built if f.endswith(".tar.gz")]
        wheels = [f for f in built if f.endswith(".whl")]
        if len(sdists) != 1 or len(wheels) != 1:
            fail(f"expected one sdist and one wheel, got {built}")
        check_sdist(os.path.join(dist, sdists[0]))
        check_wheel(os.path.join(dist, wheels[0]))
        check_script(os.path.join(dist, wheels[0]), tmp)
        # Older interpreters given after the source: the wheel built here
        # installs and runs under them (requires-python says 3.8).
        for older in sys.argv[2:]:
            check_script(os.path.join(dist, wheels[0]), tmp, python=older)
        also = "".join(f" and under {older}" for older in sys.argv[2:])
        print(f"python package: {sdists[0]} and {wheels[0]} carry {', '.join(LICENCE_FILES)}; "
              f"snakepit-python-worker answers{also}")


if __name__ == "__main__":
    main()
