"""The scanner demo: builds clean and poisoned checkpoints, scans them, checks the verdicts.

    python examples/scan_demo.py [OUT_DIR]

Poisoned files carry a harmless payload (``touch OUT_DIR/PWNED-<name>``) that is never run:
nothing here loads a pickle. Exits 0 when every poisoned file is flagged, every clean file is
safe and no marker file appeared.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
from pathlib import Path

import torch

from trainguard import Verdict, scan_path
from trainguard.cli import main as cli_main


class _Payload:
    """Pickles as ``os.system("touch <marker>")``; only ever dumped, never loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _op_str(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def build(out: Path) -> dict[str, bool]:
    """Write the example files; returns name -> is_poisoned."""
    clean, bad = out / "clean", out / "poisoned"
    clean.mkdir(parents=True, exist_ok=True)
    bad.mkdir(parents=True, exist_ok=True)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    torch.save(model.state_dict(), clean / "model_state.pt")
    torch.save(model, clean / "whole_model.pt")
    torch.save(opt.state_dict(), clean / "optimizer.pt")
    torch.save({"cpu": torch.get_rng_state(), "step": 10}, clean / "rng_state.pth")
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    (clean / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))

    def payload(name: str) -> _Payload:
        return _Payload(out / f"PWNED-{name}")

    torch.save({"cpu": torch.get_rng_state(), "x": payload("rng")}, bad / "rng_state.pth")
    torch.save(
        {"w": torch.zeros(2), "x": payload("legacy")},
        bad / "legacy.pt",
        _use_new_zipfile_serialization=False,
    )
    call = pickle.dumps(payload("broken"), protocol=2)[:-1]  # drop STOP: a "broken" pickle
    (bad / "broken.pkl").write_bytes(call + b"\xff garbage that makes pickle.load fail later")
    reexport = (  # find_class("torch.serialization", "os.system") at protocol 4
        b"\x80\x04"
        + _op_str("torch.serialization")
        + _op_str("os.system")
        + b"\x93("
        + _op_str(f"touch {out / 'PWNED-reexport'}")
        + b"tR."
    )
    (bad / "reexport.pkl").write_bytes(reexport)
    (bad / "model.safetensors").write_bytes(pickle.dumps(payload("renamed"), protocol=4))
    buf = io.BytesIO()
    import numpy as np

    np.save(buf, np.array([payload("npy")], dtype=object), allow_pickle=True)
    (bad / "weights.npy").write_bytes(buf.getvalue())
    names = {p.relative_to(out).as_posix(): False for p in clean.iterdir()}
    names.update({p.relative_to(out).as_posix(): True for p in bad.iterdir()})
    return names


def run(out: Path) -> int:
    expected = build(out)
    cli_main(["scan", str(out)])
    report = scan_path(out)
    ok = True
    for fr in report.files:
        name = Path(fr.path).relative_to(out).as_posix()
        poisoned = expected.get(name)
        if poisoned is None:
            continue
        flagged = fr.verdict in (Verdict.UNSAFE, Verdict.SUSPICIOUS)
        if flagged != poisoned:
            ok = False
            print(f"demo: WRONG verdict {fr.verdict.value} for {name}", file=sys.stderr)
    markers = list(out.glob("PWNED-*"))
    n_bad = sum(expected.values())
    print(
        f"demo: {n_bad} poisoned files, {len(expected) - n_bad} clean files, "
        f"verdicts {'as expected' if ok else 'WRONG'}, payload markers present: {len(markers)}",
        file=sys.stderr,
    )
    return 0 if ok and not markers else 1


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "generated"
    sys.exit(run(target.resolve()))
