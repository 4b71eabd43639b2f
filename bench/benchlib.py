"""Shared helpers of the benchmarks: real ``tessera`` processes, data, a light HTTP client.

Everything here talks to 127.0.0.1 only. The benchmarks run the embedded
default (SQLite bus and SQLite store) and the demo configuration, so the
write keys and read key below are the demo's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"
READ_KEY = "rk_read_123"
WEB_KEY = "wk_web_123"
CRM_KEY = "wk_crm_123"
MEMBERSHIP_KEY = "wk_membership_123"
CE_BATCH = "application/cloudevents-batch+json"


# -- machine and reporting -------------------------------------------------------


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine_line() -> str:
    one, five, fifteen = load_average()
    return (
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {one:.2f} {five:.2f} {fifteen:.2f}"
    )


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (``p`` in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def latency_summary(seconds: Iterable[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds."""
    values = sorted(seconds)
    out = {f"p{p}": percentile(values, p) * 1000 for p in (50, 90, 99, 99.9)}
    out["max"] = (values[-1] * 1000) if values else float("nan")
    out["count"] = len(values)
    return out


def write_json(path: str | None, result: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=2, default=str))


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "MISSED"


# -- tessera processes -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Tessera:
    """``tessera ARGS --data-dir DIR [--port P]`` as a child process in its own session."""

    def __init__(self, args: list[str], data_dir: Path, port: int | None = None) -> None:
        self.args = args
        self.data_dir = data_dir
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / f"{args[0]}.log"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 60.0) -> Tessera:
        cmd = [sys.executable, "-m", "tessera", *self.args, "--data-dir", str(self.data_dir)]
        if self.port is not None:
            cmd += ["--host", HOST, "--port", str(self.port)]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        if self.port is not None:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"tessera exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"tessera did not become healthy:\n{self.log.read_text()}")

    def pids(self) -> list[int]:
        """The process and its children (the worker of ``serve``)."""
        if self.process is None:
            return []
        out = [self.process.pid]
        try:
            children = subprocess.run(
                ["ps", "-o", "pid=", "--ppid", str(self.process.pid)],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            out += [int(c) for c in children]
        except OSError:
            pass
        return out

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL whatever of it is left (a worker child
        that did not stop must not outlive the benchmark)."""
        if self.process is None:
            return
        group = self.process.pid
        if self.process.poll() is None:
            os.killpg(group, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(20)
        for _ in range(50):  # up to 5 s for the rest of the group to exit
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return  # nobody left in the group
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)

    def __enter__(self) -> Tessera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bus_counts(data_dir: Path, topic: str = "events", group: str = "profiles") -> tuple[int, int]:
    """(events in the log, lag of the group), read straight from ``bus.db``."""
    conn = sqlite3.connect(f"file:{data_dir / 'bus.db'}?mode=ro", uri=True, timeout=30.0)
    try:
        total = conn.execute("SELECT count(*) FROM log WHERE topic=?", (topic,)).fetchone()[0]
        row = conn.execute(
            "SELECT seq FROM offsets WHERE grp=? AND topic=?", (group, topic)
        ).fetchone()
        offset = row[0] if row else 0
        lag = conn.execute(
            "SELECT count(*) FROM log WHERE topic=? AND seq>?", (topic, offset)
        ).fetchone()[0]
    finally:
        conn.close()
    return int(total), int(lag)


def stats(url: str) -> dict[str, Any]:
    r = httpx.get(url + "/v1/stats", headers={"Authorization": f"Bearer {READ_KEY}"}, timeout=30)
    r.raise_for_status()
    result: dict[str, Any] = r.json()
    return result


def wait_lag_zero(url: str, timeout: float) -> float:
    """Wait until the profiles group has caught up; seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if stats(url)["lag"]["profiles"] == 0:
            return time.monotonic() - start
        time.sleep(0.2)
    raise TimeoutError(f"the worker did not catch up in {timeout} s")


# -- a synthetic population and its events ------------------------------------------

FIRST = ("Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gail", "Hugo", "Iris", "Jon", "Kim", "Lea")
LAST = ("Smith", "Jones", "Garcia", "Nguyen", "Brown", "Silva", "Khan", "Müller", "Rossi", "Novak")
TIERS = ("classic", "plus", "premier")
CHANNELS = ("email", "sms", "phone", "app")
PAGES = ("/", "/pricing", "/join", "/roadside", "/travel", "/account", "/insurance")


@dataclass
class Person:
    index: int
    first: str
    last: str
    email: str | None
    user_id: str | None
    member_number: str | None
    phone: str | None
    devices: list[str]
    logged_in: set[str] = field(default_factory=set)


def population(people: int, seed: int = 7) -> list[Person]:
    """People with overlapping identifiers: most have an e-mail, many an account,
    some a member number or a phone; each browses from one to three devices."""
    rng = random.Random(seed)
    out = []
    for i in range(people):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        has_account = rng.random() < 0.8
        out.append(
            Person(
                index=i,
                first=first,
                last=last,
                email=f"{first}.{last}.{i}@example.com".lower() if rng.random() < 0.95 else None,
                user_id=f"u{i:06d}" if has_account else None,
                member_number=f"M{i:07d}" if rng.random() < 0.5 else None,
                phone=f"+1415555{i:04d}" if i < 10_000 and rng.random() < 0.3 else None,
                devices=[f"anon-{i}-{d}" for d in range(rng.randint(1, 3))],
            )
        )
    return out


@dataclass
class Outgoing:
    """One message ready to send: ``kind`` is ``segment`` or ``cloudevent``."""

    kind: str
    key: str
    body: dict[str, Any]


def event_stream(people: list[Person], events: int, seed: int = 11) -> list[Outgoing]:
    """``events`` messages from ``people`` in time order.

    Web visits are anonymous until the person logs in on that device
    (``identify`` with user id and e-mail), so anonymous profiles get merged
    into known ones; CRM and membership systems send CloudEvents keyed by
    e-mail, phone and member number, sometimes before the person ever logged
    in, which makes more separate profiles that later merge.
    """
    rng = random.Random(seed)
    t0 = 1_735_689_600.0  # 2025-01-01
    out: list[Outgoing] = []
    for n in range(events):
        p = rng.choice(people)
        ts = _iso(t0 + n * 0.7)
        roll = rng.random()
        if roll < 0.55:  # web / app
            device = rng.choice(p.devices)
            known = device in p.logged_in
            if not known and p.user_id and rng.random() < 0.25:
                p.logged_in.add(device)
                msg: dict[str, Any] = {
                    "type": "identify",
                    "userId": p.user_id,
                    "anonymousId": device,
                    "traits": {"first_name": p.first, "last_name": p.last},
                }
                if p.email:
                    msg["traits"]["email"] = p.email
            else:
                msg = {
                    "type": "track" if rng.random() < 0.5 else "page",
                    "anonymousId": device,
                    "properties": {"path": rng.choice(PAGES), "referrer": "https://search.example"},
                }
                if msg["type"] == "track":
                    msg["event"] = rng.choice(("cart_updated", "quote_requested", "video_played"))
                if known:
                    msg["userId"] = p.user_id
            msg["messageId"] = f"m-{seed}-{n}"
            msg["timestamp"] = ts
            out.append(Outgoing("segment", WEB_KEY, msg))
        elif roll < 0.8:  # crm
            data: dict[str, Any] = {
                "first_name": p.first,
                "last_name": p.last,
                "preferred_channel": rng.choice(CHANNELS),
            }
            if p.email:
                data["email"] = p.email.upper() if rng.random() < 0.1 else p.email
            if p.phone:
                data["phone"] = p.phone
            if not p.email and not p.phone:
                data["user_id"] = p.user_id or f"crm-{p.index}"
            out.append(Outgoing("cloudevent", CRM_KEY, _ce(f"crm-{seed}-{n}", "crm", ts, data)))
        else:  # membership
            data = {"tier": rng.choice(TIERS), "address": f"{p.index} Main St"}
            if p.member_number:
                data["member_number"] = p.member_number
            if p.email:
                data["email"] = p.email
            if "member_number" not in data and "email" not in data:
                data["user_id"] = p.user_id or f"crm-{p.index}"
            body = _ce(f"mem-{seed}-{n}", "membership", ts, data)
            out.append(Outgoing("cloudevent", MEMBERSHIP_KEY, body))
    return out


def _ce(event_id: str, system: str, ts: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": f"https://{system}.example.com",
        "type": f"com.example.{system}.record.updated",
        "time": ts,
        "datacontenttype": "application/json",
        "data": data,
    }


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def send_stream(url: str, stream: list[Outgoing], batch: int = 100, concurrency: int = 4) -> int:
    """POST the stream in batches (CloudEvents batch / Segment batch), keeping the order
    per source; returns how many events were accepted."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for o in stream:
        groups.setdefault((o.kind, o.key), []).append(o.body)
    requests: list[tuple[str, str, str, bytes]] = []
    for (kind, key), bodies in groups.items():
        for start in range(0, len(bodies), batch):
            chunk = bodies[start : start + batch]
            if kind == "segment":
                requests.append(
                    ("/v1/batch", key, "application/json", json.dumps({"batch": chunk}).encode())
                )
            else:
                requests.append(("/v1/events", key, CE_BATCH, json.dumps(chunk).encode()))

    async def run() -> int:
        accepted = 0
        queue: asyncio.Queue[tuple[str, str, str, bytes]] = asyncio.Queue()
        for r in requests:
            queue.put_nowait(r)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def worker() -> None:
                nonlocal accepted
                while not queue.empty():
                    path, key, ctype, body = queue.get_nowait()
                    r = await client.post(
                        path,
                        content=body,
                        headers={"Authorization": f"Bearer {key}", "Content-Type": ctype},
                    )
                    r.raise_for_status()
                    accepted += int(r.json()["accepted"])

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return accepted

    return asyncio.run(run())


# -- a light HTTP/1.1 keep-alive client for the open-loop generators ------------------


IDLE_SECONDS = 3.0
"""Connections idle longer are closed here before the server's keep-alive timeout (5 s)."""


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.last_used = time.perf_counter()
        self.reused = False

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = 0
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        data = await self.reader.readexactly(length) if length else b""
        return status, data

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Keep-alive connections to one server; opens more when all are busy (up to ``limit``)."""

    def __init__(self, port: int, limit: int = 256) -> None:
        self.port = port
        self.idle: list[Connection] = []
        self.limit = limit
        self.opened = 0
        self._free = asyncio.Condition()

    async def _acquire(self) -> Connection:
        async with self._free:
            while True:
                now = time.perf_counter()
                while self.idle and now - self.idle[0].last_used > IDLE_SECONDS:
                    self.idle.pop(0).close()
                    self.opened -= 1
                if self.idle:
                    conn = self.idle.pop()
                    conn.reused = True
                    return conn
                if self.opened < self.limit:
                    break
                await self._free.wait()
            self.opened += 1
        try:
            reader, writer = await asyncio.open_connection(HOST, self.port)
        except BaseException:
            await self._discard(None)
            raise
        return Connection(reader, writer)

    async def _discard(self, conn: Connection | None) -> None:
        if conn is not None:
            conn.close()
        async with self._free:
            self.opened -= 1
            self._free.notify()

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        while True:
            conn = await self._acquire()
            try:
                result = await conn.request(head, body)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                await self._discard(conn)
                partial = isinstance(exc, asyncio.IncompleteReadError) and exc.partial
                if conn.reused and not partial:
                    continue  # the server closed a kept-alive connection: send again
                raise
            except BaseException:
                await self._discard(conn)
                raise
            conn.last_used = time.perf_counter()
            async with self._free:
                self.idle.append(conn)
                self._free.notify()
            return result

    def close(self) -> None:
        for c in self.idle:
            c.close()
        self.idle.clear()


def get_head(path: str, key: str = READ_KEY) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {key}\r\n\r\n").encode()


def post_head(path: str, key: str, content_type: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


# -- open-loop scheduling -----------------------------------------------------------------


async def open_loop(
    rate: float, seconds: float, fire: Callable[[int, float], Awaitable[None]]
) -> list[float]:
    """Call ``fire(i, scheduled_at)`` at fixed times, ``rate`` per second for ``seconds``,
    each in its own task, never waiting for earlier ones (no coordinated omission).
    ``scheduled_at`` is in ``time.perf_counter`` seconds.
    Returns how late each call started after its scheduled time (seconds)."""
    clock = time.perf_counter
    start = clock() + 0.05
    late: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    for i in range(int(rate * seconds)):
        at = start + i / rate
        delay = at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        late.append(max(0.0, clock() - at))
        task = asyncio.create_task(fire(i, at))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return late


def fast_event_loop() -> None:
    """uvloop when installed: a load generator should spend its CPU on requests."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def store_values(data_dir: Path, type_: str, limit: int) -> list[str]:
    """Identifier values of one type that the store holds."""
    conn = sqlite3.connect(f"file:{data_dir / 'store.db'}?mode=ro", uri=True, timeout=30.0)
    try:
        rows = conn.execute(
            "SELECT value FROM identities WHERE type=? ORDER BY value LIMIT ?", (type_, limit)
        ).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


# -- sampling profiles of the processes under test (py-spy) ----------------------------------

IDLE_LEAVES = (
    "wait (threading.py",
    "select (selectors.py",
    "poll (selectors.py",
    "get (queue.py",
    "_worker (concurrent/futures/thread.py",  # a pool thread waiting for work
    "sleep (",
    "run (asyncio/runners.py",  # uvloop's loop, waiting in C
    "run_forever (asyncio/base_events.py",
    "_run_once (asyncio/base_events.py",
)


def thread_role(frames: list[str]) -> str:
    stack = ";".join(frames)
    if "_write_loop (tessera/bus" in stack:
        return "bus writer thread"
    if "Checkpointer._run" in stack:
        return "checkpointer thread"
    if "concurrent/futures/thread.py" in stack or "WorkerThread.run (anyio" in stack:
        return "thread pool"
    return "main thread"


class Spy:
    """``py-spy record`` (raw stacks, idle threads included) attached to running processes
    from construction until :meth:`stop`."""

    def __init__(self, pids: dict[str, int], out_dir: Path, mode: str = "wall") -> None:
        self.out: dict[str, Path] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        exe = Path(sys.executable).with_name("py-spy")
        spy = str(exe) if exe.exists() else "py-spy"
        self.mode = mode
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            path = out_dir / f"{name}.raw"
            self.out[name] = path
            # wall: every thread at every tick, waiting (I/O, locks, the GIL) included;
            # gil: only the thread holding the GIL, i.e. where the Python CPU time goes
            view = ["--idle"] if mode == "wall" else ["--gil"]
            cmd = [spy, "record", *view, "-t", "-r", "100", "-f", "raw", "-o", str(path)]
            self.procs.append(
                subprocess.Popen(
                    [*cmd, "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        time.sleep(0.5)  # attached before the measurement starts

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    def report(self, top: int = 12) -> str:
        gil = self.mode == "gil"
        return "\n".join(hot_spots(path, name, top, gil) for name, path in self.out.items())


def hot_spots(raw: Path, name: str, top: int = 8, gil: bool = False) -> str:
    """Where the threads of one process spent their time, by thread role.

    Shares are of the sampling ticks (wall time): "busy 80%" means on average
    0.8 threads of that role were not idle; a line "12% f (file:line)" means a
    thread of that role was in that line 12% of the time (own time, so a
    SQLite ``execute`` or ``COMMIT`` shows as the Python line that called it).
    With ``gil`` (a ``py-spy --gil`` profile: only the thread holding the GIL
    is sampled), shares are of all samples, i.e. of the Python time that held
    the GIL; SQLite and other C code that releases the GIL does not show.
    """
    if not raw.exists():
        return f"[{name}] no profile (py-spy failed?)"
    per_thread: dict[str, int] = {}
    busy: dict[str, int] = {}
    own: dict[str, dict[str, int]] = {}
    incl: dict[str, dict[str, int]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread, frames = (frames[0], frames[1:]) if frames[0].startswith("thread") else ("", frames)
        n = int(count)
        per_thread[thread] = per_thread.get(thread, 0) + n
        if not frames or any(i in frames[-1] for i in IDLE_LEAVES):
            continue
        role = thread_role(frames)
        busy[role] = busy.get(role, 0) + n
        mine = own.setdefault(role, {})
        mine[frames[-1]] = mine.get(frames[-1], 0) + n
        inclusive = incl.setdefault(role, {})
        for f in set(frames):
            if "tessera/" in f:
                inclusive[f] = inclusive.get(f, 0) + n
    ticks = sum(per_thread.values()) if gil else max(per_thread.values(), default=0)
    if not ticks:
        return f"[{name}] no samples"
    what = "of the GIL-holding samples" if gil else "of the wall time"
    lines = [f"[{name}] {ticks} {'samples' if gil else 'ticks'}"]
    for role in sorted(busy, key=lambda r: -busy[r]):
        lines.append(f"  {role}: {busy[role] / ticks:.0%} {what}; own time:")
        for f, n in sorted(own[role].items(), key=lambda x: -x[1])[:top]:
            lines.append(f"    {n / ticks:6.1%}  {f}")
        lines.append("    inclusive, in tessera/:")
        for f, n in sorted(incl[role].items(), key=lambda x: -x[1])[:top]:
            lines.append(f"    {n / ticks:6.1%}  {f}")
    return "\n".join(lines)


def spy_on(server: Tessera, out_dir: str | None, mode: str = "wall") -> Spy | None:
    """Sample ``tessera serve`` (the API process and its processors), if asked to."""
    if not out_dir:
        return None
    return Spy(server_pids(server), Path(out_dir), mode)


def add_profile_options(parser: Any) -> None:
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="sample the processes under test with py-spy, print "
        "their hot spots (raw stacks are left in DIR)",
    )
    parser.add_argument(
        "--profile-mode",
        choices=["wall", "gil"],
        default="wall",
        help="wall: all threads, waiting included; gil: only the thread holding the GIL",
    )


# -- CPU time of the processes under test ---------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuMeter:
    """CPU seconds used by some processes between :meth:`start` and :meth:`stop`.

    On a busy machine the wall-clock figures suffer from other processes; CPU
    time per operation does much less, and ``1 / cpu_per_op`` is what one
    fully available core could do."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        self.used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        return self.used


def server_pids(server: Tessera) -> dict[str, int]:
    """The API process and each processor process of ``tessera serve``, by name (``api``,
    and the name after ``--processors``: ``profiles``, ``activation``, ...)."""
    out = {"api": server.pids()[0]}
    for pid in server.pids()[1:]:
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"--processors" in args:
                out[args[args.index(b"--processors") + 1].decode()] = pid
    return out


def processors_cpu(cpu: dict[str, float]) -> float:
    """CPU seconds of every processor process (everything but the API) in ``cpu``."""
    return sum(seconds for name, seconds in cpu.items() if name != "api")
