"""The standard library against its package manager's manifest (``env.distro``).

What the check trusts is the manifest, and only when no one but root or the user could
write it; each test attacks the standard library in a way RECORD cannot see, or the
manifest itself. A synthetic dpkg database and conda prefix stand in for the system's."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from trainguard.env import distro

FILES = {
    "os.py": b"def getcwd():\n    return '/'\n",
    "json/__init__.py": b"from json.decoder import loads\n",
    "json/decoder.py": b"def loads(s):\n    return s\n",
    "LICENSE.txt": b"license\n",
}


def _stdlib(root: Path) -> Path:
    lib = root / "lib" / "python3.11"
    for rel, data in FILES.items():
        (lib / rel).parent.mkdir(parents=True, exist_ok=True)
        (lib / rel).write_bytes(data)
    (lib / "__pycache__").mkdir()
    (lib / "__pycache__" / "os.cpython-311.pyc").write_bytes(b"not listed, never judged here")
    return lib


def _dpkg(tmp: Path, lib: Path) -> Path:
    info = tmp / "dpkg-info"
    info.mkdir()
    rel = str(lib).lstrip("/")
    lines = [f"{hashlib.md5(d).hexdigest()}  {rel}/{p}" for p, d in FILES.items()]
    (info / "libpython3.11-stdlib.md5sums").write_text("\n".join(lines) + "\n")
    owned = [str(lib), *(f"{lib}/{p}" for p in FILES), f"{lib}/sitecustomize.py"]
    (info / "libpython3.11-stdlib.list").write_text("\n".join(owned) + "\n")
    (info / "other.md5sums").write_text("0123  usr/share/doc/x\n")
    return info


def _run(lib: Path, info: Path) -> tuple[dict[str, set[str]], list[str]]:
    found, notes = distro.check([str(lib)], dpkg_info=str(info))
    by: dict[str, set[str]] = {}
    for f in found:
        by.setdefault(f.rule.value, set()).add(os.path.relpath(f.location.path, lib))
    return by, notes


def test_untouched_stdlib_is_silent(tmp_path: Path) -> None:
    lib = _stdlib(tmp_path / "usr")
    (lib / "sitecustomize.py").symlink_to(lib / "os.py")  # a conffile link dpkg lists
    assert _run(lib, _dpkg(tmp_path, lib)) == ({}, [])


def test_edit_plant_and_removal_are_named(tmp_path: Path) -> None:
    lib = _stdlib(tmp_path / "usr")
    info = _dpkg(tmp_path, lib)
    (lib / "json" / "decoder.py").write_bytes(b"def loads(s):\n    return eval(s)\n")
    (lib / "json" / "_speedups.py").write_bytes(b"import os\n")  # planted, owned by no one
    (lib / "LICENSE.txt").unlink()
    by, _ = _run(lib, info)
    assert by == {
        "env.file_modified": {"json/decoder.py"},
        "env.file_added": {"json/_speedups.py"},
        "env.file_missing": {"LICENSE.txt"},
    }


def test_a_manifest_others_can_write_is_not_used(tmp_path: Path) -> None:
    lib = _stdlib(tmp_path / "usr")
    info = _dpkg(tmp_path, lib)
    os.chmod(info / "libpython3.11-stdlib.md5sums", 0o666)
    (lib / "os.py").write_bytes(b"planted\n")
    by, notes = _run(lib, info)
    assert by == {} and any("not used" in n and "writable" in n for n in notes), notes


def test_without_a_manifest_it_is_said(tmp_path: Path) -> None:
    lib = _stdlib(tmp_path / "usr")
    empty = tmp_path / "none"
    empty.mkdir()
    by, notes = _run(lib, empty)
    assert by == {} and "trusted as found" in notes[0]


def test_conda_prefix_sha256(tmp_path: Path) -> None:
    prefix = tmp_path / "conda"
    lib = _stdlib(prefix)
    meta = prefix / "conda-meta"
    meta.mkdir()
    paths = [
        {"_path": f"lib/python3.11/{p}", "path_type": "hardlink",
         "sha256": hashlib.sha256(d).hexdigest()}
        for p, d in FILES.items()
    ]  # fmt: skip
    (meta / "python-3.11.7-h1.json").write_text(json.dumps({"paths_data": {"paths": paths}}))
    assert _run(lib, tmp_path / "no-dpkg") == ({}, [])
    (lib / "os.py").write_bytes(b"def getcwd():\n    return '/tmp'\n")
    by, _ = _run(lib, tmp_path / "no-dpkg")
    assert by == {"env.file_modified": {"os.py"}}
