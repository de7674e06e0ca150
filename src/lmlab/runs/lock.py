"""One writer per run directory: a lock file with its holder's pid, host, start time and a heartbeat.

`flock` and `fcntl` locks are not honoured by every network file system, so the lock is a plain file,
`RUN/lock.json`, made in one step that either creates it or fails (a hard link of a finished temporary
file: atomic on local disks and on NFS), and refreshed by a heartbeat thread that replaces it whole.
A lock whose holder is gone is taken over with one line saying so: a dead pid on this host, or, from
any host, a heartbeat older than `STALE_S` (hosts' clocks must agree to within that).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from lmlab.errors import RunLockedError

NAME = "lock.json"
HEARTBEAT_S = 30.0
STALE_S = 300.0  # ten missed heartbeats


def _host() -> str:
    return socket.gethostname()


def _now_iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).isoformat(timespec="seconds")


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        record = None
    # Never written half (it is linked or replaced whole): an unreadable lock is junk, judged stale by its age.
    return record if isinstance(record, dict) else {"pid": -1, "host": "?", "since": 0.0, "heartbeat": 0.0}


def holder(run: str | Path) -> dict | None:
    """The lock's record (pid, host, since, heartbeat, command), or None when the run is not locked."""
    return _read(Path(run) / NAME)


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which a reused pid does not share."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name before it may hold spaces


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    return start is None or _process_start(pid) in (None, start)


def stale_reason(record: dict, *, stale_after: float = STALE_S, now: float | None = None) -> str | None:
    """Why the lock's holder is gone ('pid N is not running on HOST', 'heartbeat N s old'), or None if it is live."""
    now = time.time() if now is None else now
    age = now - float(record.get("heartbeat", 0.0))
    pid = record.get("pid")
    if record.get("host") == _host() and isinstance(pid, int) and not _alive(pid, record.get("start")):
        return f"pid {record['pid']} is not running on {record['host']}"
    if age > stale_after:
        return f"its heartbeat is {age:.0f} s old (limit {stale_after:.0f} s)"
    return None


def describe(record: dict) -> str:
    """`lmlab ACTION, pid@host since TIME (heartbeat N s ago)`: who holds a lock."""
    age = time.time() - float(record.get("heartbeat", 0.0))
    since = _now_iso(float(record.get("since", 0.0)))
    return (
        f"lmlab {record.get('action', '?')}, pid {record.get('pid')}@{record.get('host')} since {since} "
        f"(heartbeat {age:.0f} s ago)"
    )


class RunLock:
    """The lock of one run directory, held from `acquire` to `release` with a heartbeat thread between."""

    def __init__(self, run: str | Path, *, heartbeat: float = HEARTBEAT_S, stale_after: float = STALE_S) -> None:
        self.run, self.path = Path(run), Path(run) / NAME
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self.record: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write_new(self, record: dict) -> bool:
        """Create the lock file holding `record`; False if one exists."""
        tmp = self.path.with_name(f".{NAME}.tmp-{os.getpid()}-{threading.get_ident()}")
        tmp.write_text(json.dumps(record))
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self, action: str = "train") -> RunLock:
        """Hold the lock, taking over a stale one with a line on stderr; RunLockedError names a live holder."""
        now = time.time()
        record = {
            "pid": os.getpid(),
            "host": _host(),
            "start": _process_start(os.getpid()),
            "since": now,
            "heartbeat": now,
            "action": action,
            "command": " ".join(sys.argv),
        }
        while not self._write_new(record):
            current = holder(self.run)
            if current is None:
                continue  # released between our two looks
            reason = stale_reason(current, stale_after=self.stale_after)
            if reason is None:
                raise RunLockedError(
                    f"{action}: {self.run} is held by {describe(current)}; wait for it to finish or stop it, then retry"
                )
            if self._take_over(current):
                print(
                    f"{action}: taking over the lock of {self.run} from {describe(current)}: {reason}", file=sys.stderr
                )
        self.record = record
        self._thread = threading.Thread(target=self._beat, name="lmlab-run-lock", daemon=True)
        self._thread.start()
        return self

    def _take_over(self, stale: dict) -> bool:
        """Move the stale lock aside, unless another process replaced it meanwhile (then put that one back)."""
        aside = self.path.with_name(f".{NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = _read(aside)
        if moved != stale:  # a live lock taken in the meantime: restore it; the loop then refuses
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat) and self.beat():
            pass

    def beat(self) -> bool:
        """Refresh the heartbeat; False (and a warning) when another process has taken the lock over."""
        if holder(self.run) != self.record:  # this process was stopped longer than the limit: not ours to write
            print(f"warning: the lock of {self.run} is no longer held by this process", file=sys.stderr)
            return False
        self.record = {**self.record, "heartbeat": time.time()}
        tmp = self.path.with_name(f".{NAME}.beat-{os.getpid()}")
        tmp.write_text(json.dumps(self.record))
        os.replace(tmp, self.path)
        return True

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this process's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.record is not None and holder(self.run) == self.record:
            self.path.unlink(missing_ok=True)
        self.record = None

    def __enter__(self) -> RunLock:
        return self if self.record is not None else self.acquire()  # `with RunLock(d).acquire(action):` too

    def __exit__(self, *exc) -> None:
        self.release()
