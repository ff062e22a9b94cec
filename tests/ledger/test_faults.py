"""Crashes, torn writes, a full disk and concurrent writers.

Each test checks the promise from both sides: nothing acknowledged is lost, and whatever
is lost or damaged is reported by ``verify`` rather than silently dropped.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ledgerkit import db, messages, writer

from trainguard.ledger import Ledger, LedgerWriteError, read_records, verify


def _acked(proc: subprocess.Popen[str], at_least: int) -> list[int]:
    """Read acknowledged seqs until ``at_least`` arrived, then SIGKILL the writer."""
    assert proc.stdout is not None
    seqs = []
    while len(seqs) < at_least:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"writer died early: {proc.stderr.read() if proc.stderr else ''}")
        seqs.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    seqs += [int(x) for x in rest.split("\n")[:-1]]  # complete lines only
    assert proc.returncode == -signal.SIGKILL
    return seqs


@pytest.mark.parametrize("ratchet", [False, True])
def test_sigkill_mid_stream_loses_no_acknowledged_record(tmp_path: Path, ratchet: bool) -> None:
    path = tmp_path / "L"
    rng = random.Random(5)
    acked: list[int] = []
    extra = ["--ratchet", "--every", "7"] if ratchet else []
    for _ in range(3):  # three crashes into the same ledger
        acked += _acked(writer(path, *extra), rng.randrange(50, 200))
        stored = {r.seq for r in read_records(path)}
        assert set(acked) <= stored
        result = verify(path)
        assert result.intact, messages(result.findings)
    assert len(set(acked)) == len(acked)
    if ratchet:
        assert verify(path).heads_verified >= 3


def _crashed_writer(path: Path, n: int) -> Path:
    """``n`` appends, then ``os._exit``: the records are only in the WAL."""
    proc = writer(path, "--count", str(n), "--exit-after", str(n))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert [int(x) for x in out.split()] == list(range(1, n + 1))
    wal = path / "ledger.sqlite3-wal"
    assert wal.stat().st_size > 0
    return wal


def test_torn_wal_tail_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "L"
    wal = _crashed_writer(path, 40)
    with open(wal, "r+b") as f:
        f.truncate(wal.stat().st_size - 100)  # the last frame is torn
    result = verify(path)
    assert not result.intact
    text = messages(result.findings)
    assert "were acknowledged to a writer but are gone" in text and "..40" in text
    # A writer that opens the ledger now records the loss before appending anything.
    with Ledger(path) as led:
        led.append_event("after the crash")
    text = messages(verify(path).findings)
    assert "recorded by the ledger writer: records" in text and "acknowledged but are gone" in text


def test_corrupted_wal_frame_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "L"
    wal = _crashed_writer(path, 40)
    size = wal.stat().st_size
    with open(wal, "r+b") as f:  # flip bytes inside the last frame: its checksum fails
        f.seek(size - 300)
        data = f.read(50)
        f.seek(size - 300)
        f.write(bytes(b ^ 0xFF for b in data))
    result = verify(path)
    assert not result.intact
    assert "acknowledged to a writer but are gone" in messages(result.findings)


def test_full_disk_via_page_limit(tmp_path: Path) -> None:
    path = tmp_path / "L"
    led = Ledger(path)
    acked = [led.append_event(f"r{i}").seq for i in range(20)]
    conn = led._store.conn
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(LedgerWriteError, match=r"full: .* was NOT recorded") as info:
        for i in range(10_000):
            acked.append(led.append_event(f"big {i}", evidence={"pad": "x" * 2000}).seq)
    assert "acknowledged before are intact" in str(info.value)
    with pytest.raises(LedgerWriteError):  # still full: still a clear error
        led.append_event("again", evidence={"pad": "x" * 2000})
    result = verify(path)
    assert result.intact, messages(result.findings)
    assert {r.seq for r in read_records(path)} == set(acked)
    conn.execute("PRAGMA max_page_count = 1073741823")  # space again: appending resumes
    assert led.append_event("resumed").seq == len(acked) + 1
    led.close()
    assert verify(path).intact


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_on_a_real_full_file_system(tiny_tmpfs: Path, tmp_path: Path) -> None:
    path = tiny_tmpfs / "L"
    led = Ledger(path)
    acked = []
    with pytest.raises(LedgerWriteError) as info:
        for i in range(10_000):
            acked.append(led.append_event(f"big {i}", evidence={"pad": "y" * 3000}).seq)
    assert "full" in str(info.value) and "NOT recorded" in str(info.value)
    assert len(acked) > 10
    copy = tmp_path / "copy"  # verify a copy: the full mount goes away with the fixture
    shutil.copytree(path, copy)
    led.close()
    result = verify(copy)
    assert result.intact, messages(result.findings)
    assert {r.seq for r in read_records(copy)} >= set(acked)


@pytest.mark.parametrize("ratchet", [False, True])
def test_four_processes_append_concurrently(tmp_path: Path, ratchet: bool) -> None:
    path = tmp_path / "L"  # created by the four racing writers themselves
    extra = ["--ratchet", "--every", "7"] if ratchet else []
    procs = [writer(path, "--count", "150", "--tag", f"p{k}", *extra) for k in range(4)]
    acked = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        acked += [int(x) for x in out.split()]
    assert sorted(acked) == list(range(1, 601))
    records = read_records(path)
    assert [r.seq for r in records] == list(range(1, 601))
    for k in range(4):
        mine = [r.message for r in records if r.message.startswith(f"p{k} ")]
        assert mine == [f"p{k} {i}" for i in range(150)]  # each writer's order is kept
    assert len({r.pid for r in records}) == 4
    result = verify(path)
    assert result.intact and result.records == 600, messages(result.findings)
    if ratchet:  # every 7th record, plus one at each close with unsigned records
        assert result.heads >= 600 // 7 and result.heads_verified == result.heads
    (n,) = db(path).execute("SELECT count(*) FROM records").fetchone()
    assert n == 600


def test_many_processes_create_one_new_ledger_at_once(tmp_path: Path) -> None:
    """Ranks of a job open the same brand-new ledger together: setting its journal mode
    needs the file alone and SQLite answers "locked" without waiting; nobody may fail."""
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        "from trainguard.ledger import Ledger\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.001)\n"
        "with Ledger(sys.argv[1]) as led: led.append_event('hello')\n"
    )
    for attempt in range(3):
        path = tmp_path / f"L{attempt}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(path), str(go)],
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(8)
        ]
        time.sleep(1.0)
        go.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
        go.unlink()
        assert len(read_records(path)) == 8
