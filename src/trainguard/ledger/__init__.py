"""The tamper-evident ledger: what happened in a run, in a form an insider cannot quietly
rewrite.

Records (events and alerts) are canonical JSON leaves of an RFC 6962 Merkle tree stored
in SQLite; heads over the tree are signed as C2SP checkpoints, optionally with a
forward-secure key ratchet, and can be copied to a witness elsewhere as they are made.
``verify`` recomputes everything and returns ``ledger.tampered`` findings.

``trainguard run`` opens its ledger with ``run=RunOrigin(...)``: a key of the run's own,
held by the supervisor only, signs every head; the run's origin is the first record and
is named in every head; heads and the run's start go to the user's witness folder
(``WitnessDir``), which ``verify`` reads by default to find a ledger swapped, rolled
back, cut short or re-signed.

::

    with Ledger("runs/ledger", key="ledger.key", witness="/mnt/elsewhere/heads.jsonl") as led:
        led.append_event("training started", step=0)
        led.append_alert(finding, step=1200)
    result = verify("runs/ledger", public_key="ledger.pub", witness="/mnt/elsewhere/heads.jsonl")
"""

from trainguard.ledger.anchor import WitnessDir
from trainguard.ledger.core import Ledger
from trainguard.ledger.note import Checkpoint
from trainguard.ledger.reading import default_path, read_records, show
from trainguard.ledger.record import Record
from trainguard.ledger.runs import RunOrigin
from trainguard.ledger.sink import ledger_sink, open_ledger
from trainguard.ledger.store import LedgerWriteError, network_fs_type
from trainguard.ledger.transfer import export_jsonl, import_jsonl
from trainguard.ledger.verify import LedgerVerification, check, verify

__all__ = [
    "Checkpoint",
    "Ledger",
    "LedgerVerification",
    "LedgerWriteError",
    "Record",
    "RunOrigin",
    "WitnessDir",
    "check",
    "default_path",
    "export_jsonl",
    "import_jsonl",
    "ledger_sink",
    "network_fs_type",
    "open_ledger",
    "read_records",
    "show",
    "verify",
]
