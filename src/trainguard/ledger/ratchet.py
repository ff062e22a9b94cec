"""Forward-secure head signing: a key that moves forward and forgets where it was.

With a fixed signing key, whoever steals it (root on the machine, a copied home folder)
can rewrite the whole ledger and re-sign every head. With the ratchet, each signed head
is made by the key of its epoch ``e`` and carries the public key of epoch ``e + 1``; right
after the head is committed, the seed of epoch ``e`` is replaced by
``HKDF-SHA256(seed_e, "trainguard.ledger.ratchet.v1")`` and erased from disk (overwritten
in place, fsynced, then the new file renamed over it). A key stolen at epoch ``k``
therefore cannot sign anything a verifier would accept for epochs before ``k``: heads
already signed stay pinned, and with them every record they cover.

The trade-offs, stated plainly:

* Verifiers need the epoch-0 public key from somewhere the attacker cannot write (a
  copy kept off the machine, the witness, a config repository) and walk the chain of
  ``next-key`` lines from it; a head whose predecessor is lost cannot be checked.
* Records appended after the last head are protected only by the next head: a thief of
  the current key can rewrite that tail, nothing earlier.
* The seed lives in ``ratchet.key`` (mode 0600) so that every rank and every restart
  continues the chain. Erasure is best effort: on SSDs, copy-on-write file systems and
  backups, overwritten blocks may survive. If you start the ratchet from a PEM key,
  delete that PEM afterwards; the ratchet cannot erase a file it did not write.
* Losing ``ratchet.key`` ends the chain: later heads cannot be signed until a new
  ledger (with a new epoch-0 key) is started.

``ratchet.pub`` (public) says which epoch the secret is at, so a verifier notices when
heads were deleted: the key has moved past the last head it can find.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from trainguard import keys
from trainguard.errors import ConfigError, IntegrityError
from trainguard.ledger import note

__all__ = ["LABEL", "Ratchet", "read_public_state"]

LABEL = b"trainguard.ledger.ratchet.v1"
_FORMAT = "trainguard.ledger.ratchet"


class Ratchet:
    """The secret of the current epoch, in ``<ledger>/ratchet.key``."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "ratchet.key"
        self._next = directory / "ratchet.key.next"
        self._pub = directory / "ratchet.pub"
        self._lock = directory / "ratchet.lock"

    def exists(self) -> bool:
        return self.path.exists() or self._next.exists()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held from signing until the seed has advanced, so two ranks never sign with
        the same epoch twice or advance it twice."""
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def start(self, seed: bytes) -> None:
        """Begin at epoch 0 with ``seed``."""
        self._write(self.path, 0, seed)
        self._publish(0, seed)

    def load(self) -> tuple[int, bytes]:
        """(epoch, seed), finishing an advance that a crash interrupted."""
        if self._next.exists():
            try:
                state = self._read(self._next)
            except ConfigError:
                self._next.unlink()  # torn while being written: the old seed is current
            else:
                self._erase(self.path)
                os.replace(self._next, self.path)
                _fsync_dir(self.path.parent)
                self._publish(*state)
                return state
        return self._read(self.path)

    def sign(
        self,
        origin: str,
        size: int,
        root: bytes,
        last_epoch: int | None,
        *,
        extra: Sequence[str] = (),
    ) -> tuple[note.Checkpoint, Callable[[], object]]:
        """Sign a head with the current epoch's key, publishing the next key in it.
        Returns the head and the advance to run once the head is committed. Call with
        ``locked()`` held, and ``last_epoch`` read in the same write transaction."""
        epoch, seed = self.load()
        if last_epoch is not None and epoch == last_epoch:  # crashed between commit and advance
            epoch, seed = self.advance(epoch, seed)
        elif epoch != (-1 if last_epoch is None else last_epoch) + 1:
            raise IntegrityError(
                f"the ratchet key is at epoch {epoch} but the last head is epoch {last_epoch}: "
                "the key file was replaced or restored, or heads were removed"
            )
        nxt = keys.public_raw(keys.public_key_of(keys.ed25519_from_seed(next_seed(seed))))
        body = note.body_text(origin, size, root, epoch=epoch, next_key=nxt, extra=extra)
        head = note.sign(body, origin, keys.ed25519_from_seed(seed))
        return head, lambda: self.advance(epoch, seed)

    def advance(self, epoch: int, seed: bytes) -> tuple[int, bytes]:
        """Move from ``epoch`` to the next one and erase ``seed`` from disk."""
        nxt = next_seed(seed)
        self._write(self._next, epoch + 1, nxt)
        self._erase(self.path)
        os.replace(self._next, self.path)
        _fsync_dir(self.path.parent)
        self._publish(epoch + 1, nxt)
        return epoch + 1, nxt

    def _write(self, path: Path, epoch: int, seed: bytes) -> None:
        data = json.dumps(
            {"format": _FORMAT, "epoch": epoch, "seed": base64.b64encode(seed).decode()}
        ).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _read(self, path: Path) -> tuple[int, bytes]:
        try:
            st = path.stat()
            obj = json.loads(path.read_bytes())
            seed = base64.b64decode(obj["seed"], validate=True)
            epoch = obj["epoch"]
        except FileNotFoundError:
            raise ConfigError(f"the ledger's ratchet key {path} is missing") from None
        except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ConfigError(f"the ledger's ratchet key {path} is unreadable: {exc}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path} is readable by group or others; run: chmod 600 {path}")
        if not isinstance(epoch, int) or len(seed) != 32 or obj.get("format") != _FORMAT:
            raise ConfigError(f"{path} is not a trainguard ratchet key")
        return epoch, seed

    def _erase(self, path: Path) -> None:
        """Overwrite in place and fsync before the rename drops the name."""
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            return
        try:
            size = os.fstat(fd).st_size
            os.pwrite(fd, b"\0" * size, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _publish(self, epoch: int, seed: bytes) -> None:
        public = keys.public_raw(keys.public_key_of(keys.ed25519_from_seed(seed)))
        tmp = self._pub.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"epoch": epoch, "public_key": base64.b64encode(public).decode()})
        )
        os.replace(tmp, self._pub)


def next_seed(seed: bytes) -> bytes:
    return keys.derive_seed(seed, LABEL)


def read_public_state(directory: Path) -> tuple[int, bytes] | None:
    """(epoch, raw public key) from ``ratchet.pub``, or ``None`` if there is none."""
    try:
        obj = json.loads((directory / "ratchet.pub").read_text())
        return int(obj["epoch"]), base64.b64decode(obj["public_key"], validate=True)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, binascii.Error):
        return None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
