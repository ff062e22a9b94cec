"""What ``trainguard scan`` does with inputs that are not plain files: FIFOs, devices, sockets,
unreadable files and folders, empty folders, symbolic links, names that cannot be printed, and
formats whose optional reader is missing. Each is an explicit ``error`` (exit 2) with its path,
in bounded time, without a traceback.

The CLI runs in a subprocess with a timeout wherever a regression would hang (a FIFO opened for
reading blocks until a writer comes).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import struct
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trainguard import Verdict, exit_codes, scan_file, scan_path
from trainguard.cli import main
from trainguard.scan.optional import INSTALL_HINT

from pk import call, glob, marker_cmd, proto

ROOT = Path(__file__).resolve().parents[2]
HINT = "install it with: pip install 'trainguard[scan]'"


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m trainguard scan ARGS``; a hang fails the test after 60 s."""
    return subprocess.run(
        [sys.executable, "-m", "trainguard", "scan", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        encoding="utf-8",
        errors="strict",  # output that is not valid UTF-8 fails the test
    )


def files_of(out: str) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in json.loads(out)["files"]}


def no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    assert "Traceback" not in r.stdout


def malicious(path: Path) -> Path:
    path.write_bytes(proto(2) + call(glob("os", "system"), marker_cmd("/x")) + b".")
    return path


# -- special files -------------------------------------------------------------------------


def test_fifo_given_directly_is_an_error_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    r = cli("--format", "json", fifo)
    no_traceback(r)
    assert r.returncode == exit_codes.ERROR
    (res,) = files_of(r.stdout).values()
    assert res["path"] == str(fifo) and res["verdict"] == "error"
    assert "FIFO" in res["findings"][0]["message"]


def test_fifo_inside_a_folder_is_an_error_and_the_rest_is_scanned(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    malicious(tmp_path / "evil.pkl")
    (tmp_path / "config.json").write_text("{}")
    r = cli("--format", "json", tmp_path)
    no_traceback(r)
    assert r.returncode == exit_codes.ERROR  # 2 wins over 1
    res = files_of(r.stdout)
    assert res[str(tmp_path / "pipe")]["verdict"] == "error"
    assert res[str(tmp_path / "evil.pkl")]["verdict"] == "unsafe"
    assert res[str(tmp_path / "config.json")]["verdict"] == "safe"


def test_human_output_names_the_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    r = cli(tmp_path / "pipe")
    assert r.returncode == exit_codes.ERROR
    assert "ERROR" in r.stdout and str(tmp_path / "pipe") in r.stdout
    assert "not a regular file" in r.stdout


def test_dev_zero_is_an_error_not_safe_empty() -> None:
    r = cli("--format", "json", "/dev/zero")
    no_traceback(r)
    assert r.returncode == exit_codes.ERROR
    (res,) = files_of(r.stdout).values()
    assert res["verdict"] == "error" and res["path"] == "/dev/zero"
    assert "character device" in res["findings"][0]["message"]


def test_socket_is_an_error() -> None:
    with tempfile.TemporaryDirectory(prefix="tg") as tmp:  # short: AF_UNIX paths are short
        path = Path(tmp) / "s"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(path))
            r = cli("--format", "json", tmp)
    assert r.returncode == exit_codes.ERROR
    (res,) = files_of(r.stdout).values()
    assert res["path"] == str(path) and "socket" in res["findings"][0]["message"]


def test_symlink_to_a_fifo_is_not_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link.pt").symlink_to(tmp_path / "pipe")
    r = cli("--format", "json", tmp_path / "link.pt")
    assert r.returncode == exit_codes.ERROR
    assert "FIFO" in r.stdout


def test_proc_file_with_size_zero_is_not_judged_empty() -> None:
    res = scan_file("/proc/self/status")
    assert res.verdict is Verdict.ERROR
    assert "size of 0" in res.findings[0].message


def test_scan_file_on_a_folder_is_an_error(tmp_path: Path) -> None:
    res = scan_file(tmp_path)
    assert res.verdict is Verdict.ERROR and res.format == "folder"


# -- unreadable ----------------------------------------------------------------------------


@pytest.fixture
def deny(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Paths made unreadable: mode 000, and (since root reads through permission bits)
    ``os.open``/``os.scandir`` refusing them as the kernel refuses other users."""
    denied: list[Path] = []
    real_open, real_scandir = os.open, os.scandir

    def refuse(path: Any) -> None:
        if any(Path(os.fsdecode(path)) == d for d in denied):
            raise PermissionError(13, "Permission denied", os.fsdecode(path))

    def fake_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        refuse(path)
        return real_open(path, flags, mode, **kw)

    def fake_scandir(path: Any = ".") -> Any:
        refuse(path)
        return real_scandir(path)

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "scandir", fake_scandir)
    yield denied
    for d in denied:
        d.chmod(0o755 if d.is_dir() else 0o644)


def test_unreadable_file_is_an_error(
    tmp_path: Path, deny: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "model.pt"
    p.write_bytes(pickle.dumps([1]))
    p.chmod(0)
    deny.append(p)
    assert main(["scan", "--format", "json", "-j", "1", str(p)]) == exit_codes.ERROR
    (res,) = files_of(capsys.readouterr().out).values()
    assert res["verdict"] == "error" and "Permission denied" in res["findings"][0]["message"]


def test_unreadable_folder_is_an_error_not_skipped(
    tmp_path: Path, deny: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ok.json").write_text("{}")
    locked = tmp_path / "locked"
    locked.mkdir()
    malicious(locked / "evil.pkl")
    locked.chmod(0)
    deny.append(locked)
    assert main(["scan", "--format", "json", "-j", "1", str(tmp_path)]) == exit_codes.ERROR
    res = files_of(capsys.readouterr().out)
    assert res[str(tmp_path / "ok.json")]["verdict"] == "safe"
    err = res[str(locked)]
    assert err["verdict"] == "error"
    assert "cannot read folder: Permission denied" in err["findings"][0]["message"]


def test_unreadable_top_folder_is_an_error(
    tmp_path: Path, deny: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    deny.append(locked)
    assert main(["scan", "-j", "1", str(locked)]) == exit_codes.ERROR
    assert "cannot read folder" in capsys.readouterr().out


# -- nothing to scan, symbolic links -------------------------------------------------------


def test_empty_folder_exits_2_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    r = cli(tmp_path)
    no_traceback(r)
    assert r.returncode == exit_codes.ERROR
    assert "nothing was scanned" in r.stdout


def test_folder_holding_only_a_folder_link_exits_2(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir()
    (target / "w.json").write_text("{}")
    top = tmp_path / "top"
    top.mkdir()
    (top / "link").symlink_to(target, target_is_directory=True)
    r = cli("--format", "json", top)
    assert r.returncode == exit_codes.ERROR
    (res,) = files_of(r.stdout).values()
    assert res["path"] == str(top / "link") and res["verdict"] == "error"
    assert "not followed" in res["findings"][0]["message"]


def test_folder_link_loop_ends(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "w.json").write_text("{}")
    r = cli("--format", "json", tmp_path)
    assert r.returncode == exit_codes.ERROR
    assert set(files_of(r.stdout)) == {str(tmp_path / "loop"), str(tmp_path / "w.json")}


def test_link_given_as_path_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    malicious(real / "evil.pkl")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    r = cli("--format", "json", tmp_path / "link")
    assert r.returncode == exit_codes.FINDINGS
    assert files_of(r.stdout)[str(tmp_path / "link" / "evil.pkl")]["verdict"] == "unsafe"


def test_file_link_inside_a_folder_is_scanned_as_its_target(tmp_path: Path) -> None:
    outside = malicious(tmp_path / "blob")
    snap = tmp_path / "snapshot"
    snap.mkdir()
    (snap / "pytorch_model.bin").symlink_to(outside)
    r = cli("--format", "json", snap)
    assert r.returncode == exit_codes.FINDINGS
    assert files_of(r.stdout)[str(snap / "pytorch_model.bin")]["verdict"] == "unsafe"


def test_dangling_link_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "gone.pt").symlink_to(tmp_path / "nowhere")
    r = cli("--format", "json", tmp_path)
    assert r.returncode == exit_codes.ERROR
    assert "dangling symbolic link" in r.stdout


def test_library_reports_empty_folder_too(tmp_path: Path) -> None:
    report = scan_path(tmp_path)
    assert report.has_error and report.files[0].path == str(tmp_path)


# -- names that cannot be printed ----------------------------------------------------------


def _binunicode(raw: bytes) -> bytes:
    return b"X" + struct.pack("<I", len(raw)) + raw


SURROGATE = "sys\ud800tem".encode("utf-8", "surrogatepass")


@pytest.fixture
def surrogate_files(tmp_path: Path) -> Path:
    # STACK_GLOBAL whose name is a BINUNICODE string holding a lone surrogate
    (tmp_path / "stack.pkl").write_bytes(
        proto(4) + _binunicode(b"os") + _binunicode(SURROGATE) + b"\x93)R."
    )
    (tmp_path / "module.pkl").write_bytes(
        proto(4) + _binunicode(b"o\xed\xb0\x80s") + _binunicode(b"system") + b"\x93."
    )
    # GLOBAL whose name is not UTF-8 at all
    (tmp_path / "global.pkl").write_bytes(proto(2) + b"cos\nsys\xfftem\n)R.")
    # a file name that is not UTF-8 (a surrogate-escaped str in Python)
    (tmp_path / os.fsdecode(b"\xff\xfe.pkl")).write_bytes(pickle.dumps([1]))
    return tmp_path


def _all_strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _all_strings(k)
            yield from _all_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _all_strings(v)


def _assert_encodable(doc: Any) -> None:
    for s in _all_strings(doc):
        s.encode("utf-8")  # raises on a lone surrogate


def test_surrogates_in_human_output(surrogate_files: Path) -> None:
    r = cli("--explain", surrogate_files)
    no_traceback(r)
    assert r.returncode in (exit_codes.FINDINGS, exit_codes.ERROR)
    assert r"os.sys\ud800tem" in r.stdout
    assert r"\udcff\udcfe.pkl" in r.stdout
    assert "UNSAFE" in r.stdout


def test_surrogates_in_json_output(surrogate_files: Path) -> None:
    r = cli("--format", "json", "--explain", surrogate_files)
    no_traceback(r)
    doc = json.loads(r.stdout)
    _assert_encodable(doc)
    res = {Path(f["path"]).name: f for f in doc["files"]}
    stack = res["stack.pkl"]
    assert stack["verdict"] == "unsafe"
    assert stack["findings"][0]["evidence"]["global"] == r"os.sys\ud800tem"
    assert res["module.pkl"]["verdict"] in ("unsafe", "suspicious")
    assert any(r"o\udc00s" in s for s in _all_strings(res["module.pkl"]))  # escaped as text
    assert res["global.pkl"]["verdict"] != "safe"
    assert r"\udcff\udcfe.pkl" in res


def test_surrogates_in_sarif_output(surrogate_files: Path) -> None:
    r = cli("--format", "sarif", surrogate_files)
    no_traceback(r)
    doc = json.loads(r.stdout)
    _assert_encodable(doc)
    texts = [x["message"]["text"] for x in doc["runs"][0]["results"]]
    assert any(r"os.sys\ud800tem" in t for t in texts)


def test_surrogates_written_to_an_output_file(surrogate_files: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.txt"
    r = cli("-o", out, surrogate_files)
    no_traceback(r)
    assert r"os.sys\ud800tem" in out.read_text(encoding="utf-8")


# -- optional readers ----------------------------------------------------------------------


def _missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], path: Path, *mods: str
) -> dict[str, Any]:
    for mod in mods:
        monkeypatch.setitem(sys.modules, mod, None)  # import raises ImportError
    assert main(["scan", "--format", "json", "-j", "1", str(path)]) == exit_codes.ERROR
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    (res,) = files_of(out.out).values()
    assert res["verdict"] == "error"
    return dict(res["findings"][0])


def test_missing_py7zr_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import py7zr  # a test dependency: the archive is built with it, then hidden

    p = tmp_path / "model.7z"
    with py7zr.SevenZipFile(p, "w") as z:
        z.writestr(pickle.dumps([1]), "data.pkl")
    finding = _missing(monkeypatch, capsys, p, "py7zr")
    assert HINT in finding["message"] and "py7zr" in finding["message"]
    assert finding["evidence"]["package"] == "py7zr"


def test_missing_lz4_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "model.joblib"
    # an lz4 frame header (magic, flags, block descriptor, header checksum): enough to sniff
    p.write_bytes(b"\x04\x22\x4d\x18\x64\x40\xa7" + b"\x00" * 16)
    finding = _missing(monkeypatch, capsys, p, "lz4", "lz4.frame")
    assert HINT in finding["message"] and "lz4" in finding["message"]


def test_missing_jinja2_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "chat_template.jinja"
    p.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    finding = _missing(monkeypatch, capsys, p, "jinja2")
    assert HINT in finding["message"] and "jinja2" in finding["message"]


def test_missing_pyyaml_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "config.yaml"
    p.write_text("model: x\nchat_template: \"{{ messages[0]['content'] }}\"\n")
    finding = _missing(monkeypatch, capsys, p, "yaml")
    assert HINT in finding["message"] and "PyYAML" in finding["message"]


def test_install_hint_is_the_one_in_the_message() -> None:
    assert INSTALL_HINT == HINT


def _extras() -> dict[str, list[str]]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        extras: dict[str, list[str]] = tomllib.load(fh)["project"]["optional-dependencies"]
    return extras


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in reqs}


def test_scan_extra_holds_every_lazily_imported_reader_package() -> None:
    pattern = re.compile(
        r"^\s*(?:import|from)\s+(py7zr|lz4|h5py|jinja2|yaml)\b|import_module\(\"(yaml)\"\)", re.M
    )
    used: set[str] = set()
    for path in (ROOT / "src" / "trainguard" / "scan").rglob("*.py"):
        for m in pattern.finditer(path.read_text(encoding="utf-8")):
            used.add(m.group(1) or m.group(2))
    pip_name = {"yaml": "pyyaml"}
    assert {"py7zr", "lz4", "h5py", "jinja2", "yaml"} <= used
    assert {pip_name.get(u, u) for u in used} <= _names(_extras()["scan"])


def test_all_extra_is_every_feature_extra() -> None:
    extras = _extras()
    (spec,) = extras["all"]
    named = re.fullmatch(r"trainguard\[(.*)\]", spec)
    assert named is not None
    assert set(named.group(1).split(",")) == set(extras) - {"all", "test", "dev"}
