"""Fixtures for the env tests (the helpers live in ``envkit``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from envkit import DISTUTILS_LINE, FINDER_LINE, TINY, Env, add_to_record, build_wheel


@pytest.fixture(scope="session")
def _template(tmp_path_factory: pytest.TempPathFactory) -> Env:
    base = tmp_path_factory.mktemp("envtpl")
    wheelhouse = base / "wheels"
    wheelhouse.mkdir()
    build_wheel(
        wheelhouse, "tinypkg", "1.0", TINY, "[console_scripts]\ntiny = tinypkg.optim:step\n"
    )
    hack = Path(sys.prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}")
    hack_src = next(hack.glob("site-packages/_distutils_hack/__init__.py"), None)
    build_wheel(
        wheelhouse,
        "shim",
        "1.0",
        {
            "distutils-precedence.pth": DISTUTILS_LINE.encode(),
            "_distutils_hack/__init__.py": hack_src.read_bytes()
            if hack_src
            else b"def add_shim():\n    pass\n",
        },
    )
    build_wheel(
        wheelhouse,
        "proj",
        "1.0",
        {
            "__editable__.proj-1.0.pth": FINDER_LINE.encode(),
            "__editable___proj_1_0_finder.py": b"import sys\n\ndef install():\n    pass\n",
        },
    )
    root = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = str(root / "bin" / "python")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--disable-pip-version-check",
            "--find-links",
            str(wheelhouse),
            "tinypkg",
            "shim",
            "proj",
        ],
        check=True,
    )
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    proj = next(site.glob("proj-*.dist-info"))
    direct = proj / "direct_url.json"
    direct.write_text(json.dumps({"url": "file:///src/proj", "dir_info": {"editable": True}}))
    add_to_record(proj, direct)
    return Env(root, python, site, wheelhouse)


@pytest.fixture
def env(_template: Env, tmp_path: Path) -> Env:
    """A private copy of the template venv (same absolute layout inside tmp_path)."""
    root = tmp_path / "venv"
    shutil.copytree(_template.root, root, symlinks=True)
    site = root / _template.site.relative_to(_template.root)
    return Env(root, str(root / "bin" / "python"), site, _template.wheelhouse)


@pytest.fixture(scope="session")
def warm_cache(_template: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .pyc verdict cache that vouches for this interpreter's standard library, written
    here without compiling (the cache's owner may write what he likes: that is what the
    cache trusts), so that a first-use seal in a test compiles only its own few files
    instead of every stdlib .pyc (~20-60 s on 2 cores). The product never does this."""
    import hashlib

    from trainguard.env.probe import pyc
    from trainguard.env.verdicts import MAGIC

    out = subprocess.run(
        [_template.python, "-I", "-S", "-c", "import sys; print(repr(sys.path))"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    tag = sys.implementation.cache_tag
    keys: list[bytes] = []
    for folder in eval(out):  # the probe's own view of the standard library
        for cached in Path(folder).glob(f"**/__pycache__/*.{tag}*.pyc"):
            if "site-packages" in cached.parts:
                continue
            source, opt, _ = pyc.source_for(str(cached), tag)
            if source is None or not os.path.isfile(source):
                continue
            files = []
            for p in (str(cached), source):
                data = Path(p).read_bytes()
                files += [p, os.lstat(p), hashlib.sha256(data).hexdigest()]
            keys.append(bytes.fromhex(pyc.verdict_key(*files, opt)))  # type: ignore[arg-type]
    cache = tmp_path_factory.mktemp("warm") / "pyc-verdicts.bin"
    cache.write_bytes(MAGIC + b"".join(keys))
    return cache


@pytest.fixture
def state(warm_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state folder (0700) with the warm verdict cache, named in the
    environment as ``TRAINGUARD_STATE_DIR`` (inherited by launched processes)."""
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    shutil.copy(warm_cache, folder / "pyc-verdicts.bin")
    monkeypatch.setenv("TRAINGUARD_STATE_DIR", str(folder))
    return folder


@pytest.fixture(autouse=True)
def _private_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep first-use seals and the verdict cache of every test out of the real home."""
    monkeypatch.setenv("TRAINGUARD_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def clean_environ() -> dict[str, str]:
    """The process environment without start-up variables this machine may have set."""
    from trainguard.env.environ import VARIABLES

    return {k: v for k, v in os.environ.items() if k not in VARIABLES}
