"""Who holds the ledger's key under ``trainguard run``, and when heads are signed.

The supervisor makes a fresh Ed25519 key for the run in its own memory. It is never
written anywhere and never given to the job: the job's environment carries the ledger
folder but no key (``TRAINGUARD_LEDGER_KEY`` is removed from it), so the job's processes
(and an insider's code running inside them) append records and cannot sign anything.
The supervisor signs heads over the whole tree, whoever appended to it:

* at once after the run's ``run.origin`` record, and again just before the job starts
  (the pre-flight results are pinned before a line of the job runs);
* while the job runs, when the tree has grown and ``HEAD_INTERVAL_S`` has passed since
  the last head, or at the next poll (0.2 s) after an alert arrives;
* at exit, over everything, ``run.exited`` included.

Every head goes into the ledger and to the witness: the user's own state folder by
default (``ledger.anchor``), plus a command when ``$TRAINGUARD_WITNESS_COMMAND`` is set.
A record is safe from a quiet rewrite from the first head that covers it; before that
(``HEAD_INTERVAL_S`` at most, while the supervisor lives) it is not.

The key in memory is kept from other processes of the same user where Linux allows:
the supervisor makes itself non-dumpable (``PR_SET_DUMPABLE`` 0), so neither a process of
the job nor anything else running as the user can read its memory through
``/proc/<pid>/mem`` or attach a debugger (root still can). What no key can help with:
code of the insider's that runs inside the job runs as the user, and can write whatever
the user can, the witness folder in the home included; the witness in the home is an
anchor against the insider acting from his own account (rewriting the shared folder
during or after the run), and ``$TRAINGUARD_WITNESS_COMMAND`` to a machine he cannot
reach is the anchor against more.

An admin key (``--ledger-key`` / ``$TRAINGUARD_LEDGER_KEY``) replaces the per-run key:
the same scheme, but a key that exists on disk, so whoever can read that file can sign.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from trainguard import keys
from trainguard.errors import ConfigError
from trainguard.ledger import Ledger
from trainguard.ledger.anchor import WITNESS_COMMAND_ENV, WITNESS_DIR_ENV, WitnessDir, default_dir
from trainguard.ledger.note import Checkpoint
from trainguard.ledger.runs import RunOrigin, fingerprint, new_run_id
from trainguard.ledger.store import describe

__all__ = ["HEAD_INTERVAL_S", "RunSigner"]

HEAD_INTERVAL_S = 5.0
"""A head at most this often while records arrive: the window in which a record just
appended can still be rewritten unnoticed, traded against the witness growing by one
~0.5 kB line per head (about 50,000 lines for a three-day run appending all the time)."""


class RunSigner:
    """The run's key, its ledger and its heads. ``open`` once; ``tick`` on every poll."""

    def __init__(
        self,
        ledger_path: Path | str,
        command: Sequence[str],
        *,
        fixed_key: Path | None,
        say: Callable[[str], None],
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.ledger_path = ledger_path
        self.command = tuple(command)
        self.fixed_key = fixed_key
        self.say = say
        self.environ = os.environ if environ is None else environ
        self.last_head: Checkpoint | None = None
        self.witness: WitnessDir | None = None
        self._last = 0.0
        self._urgent = False
        self._shown = 0

    def open(self) -> Ledger:
        key, mode = self._key()
        pub = keys.public_raw(keys.public_key_of(key)) if key is not None else None
        self.witness = self._witness_dir()
        command = shlex.split(self.environ.get(WITNESS_COMMAND_ENV, "")) or None
        origin = RunOrigin(run=new_run_id(), command=self.command, public_key=pub, key_mode=mode)
        self.ledger = Ledger(
            self.ledger_path,
            key=key,
            head_every=0,
            run=origin,
            witness_dir=self.witness,
            witness_command=command,
        )
        where = [str(self.witness.path)] if self.witness else []
        where += [f"command {command[0]}"] if command else []
        holder = "held by this process only" if mode == "run" else f"from {self.fixed_key}"
        self.say(
            f"run {origin.run}: ledger heads signed with {fingerprint(pub) or 'no key'} "
            f"({holder}); witness: {', '.join(where) or 'NONE'}"
        )
        self.tick(urgent=True)
        return self.ledger

    def alerted(self) -> None:
        """An alert arrived: pin it with a head at the next tick."""
        self._urgent = True

    def tick(self, *, urgent: bool = False) -> None:
        now = time.monotonic()
        if not (urgent or self._urgent) and now - self._last < HEAD_INTERVAL_S:
            return
        self._last, self._urgent = now, False
        head = self.ledger.head()
        if head is not None:
            self.last_head = head
        self._show_witness_errors()

    def close(self) -> None:
        """The last head, over everything; then the ledger is closed and the key gone."""
        try:
            self.tick(urgent=True)
        finally:
            self.ledger.close()
        head = self.last_head
        if head is not None and self.ledger.run is not None:
            where = f" --witness-dir {self.witness.path}" if self.witness is not None else ""
            self.say(
                f"ledger head: {head.size} records of run {self.ledger.run.run} signed; check "
                f"with: trainguard ledger verify --ledger {describe(self.ledger_path)} "
                f"--origin {self.ledger.run.run}{where}"
            )

    def _key(self) -> tuple[keys.PrivateKey | None, str]:
        if self.fixed_key is not None:
            return keys.load_private_key(self.fixed_key), "key"
        try:
            key = keys.ed25519_from_seed(os.urandom(32))
        except ConfigError as exc:  # no `cryptography`: witnessed, not signed
            self.say(f"ledger heads are NOT signed ({exc}); the witness still pins them")
            return None, "run"
        if not _not_dumpable():
            self.say(
                "could not make the supervisor non-dumpable: other processes of this user "
                "may be able to read the run's key from its memory"
            )
        return key, "run"

    def _witness_dir(self) -> WitnessDir | None:
        folder = default_dir(self.environ)
        if folder is None:
            self.say(
                f"{WITNESS_DIR_ENV} is off: no copy of the heads is kept outside the ledger "
                "folder, so a ledger replaced whole cannot be told from the real one"
            )
            return None
        witness = WitnessDir(folder)
        problem = witness.trust_problem()
        if problem is not None:
            self.say(f"{problem}: not used as a witness")
            return None
        return witness

    def _show_witness_errors(self) -> None:
        for text in self.ledger.witness_errors[self._shown :]:
            self.say(f"witness failed (recorded in the ledger): {text}")
        self._shown = len(self.ledger.witness_errors)


_PR_SET_DUMPABLE = 4


def _not_dumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)``: no core dump, no ``ptrace`` attach and no
    ``/proc/<pid>/mem`` for other processes of the same user. The job's processes are
    unaffected: ``execve`` gives every new program the default back."""
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
