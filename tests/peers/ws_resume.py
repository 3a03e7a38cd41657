#!/usr/bin/env python3
"""A phone-like client of the Gatehouse WebSocket API, written from docs/websocket-protocol.md.

It is an independent peer: somebody else's WebSocket stack (the `websockets` library) speaking
the documented `gatehouse.v1` protocol to a running server, and checking the server keeps the
document's promises about commands and resuming:

1. logs in over REST, connects (subprotocol `gatehouse.v1`), authenticates, subscribes to a
   closed gate (the given one, or the first closed one `GET /api/v1/gates` lists);
2. `open`: exactly one `accepted`, then exactly one terminal ack (`completed`); the gate's
   events reach `open`, contiguous in `seq`;
3. `close`, and once the gate is seen `closing` the connection is dropped abruptly (the TCP
   connection is aborted: no close handshake);
4. a second connection waits for the gate to be closed and sends `open`, so the gate moves
   while the first client is away;
5. the first client refreshes its token, reconnects, authenticates and subscribes with
   `since: {gate: last_seq}`; it must get the snapshot, then the replayed events from
   `last_seq + 1` (or the snapshot's `replay_from`), then live ones, with no gap and no
   duplicate, up to `open` and the `command_finished` of the second connection's command;
6. it repeats the `close` whose outcome it lost in the drop (same id): one terminal ack,
   without the gate moving again; the events it saw match `GET /api/v1/gates/{gate}/events`.

Prints one line of JSON and exits 0 when every check held; exits 1 with a message naming the
violated check otherwise. Every wait is bounded; the whole run is cut off after 55 s.

Needs Python 3.11 and `websockets` 15 (`pip install websockets==15.0.1`); HTTP uses only the
standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SUBPROTOCOL = "gatehouse.v1"
TOTAL_LIMIT_S = 55.0
# A gate of the demo travels in 4-8 s; polling and the database add a little.
MOVE_LIMIT_S = 20.0
REPLY_LIMIT_S = 5.0
TERMINAL = {"completed", "rejected", "failed", "timed_out"}


class Violation(Exception):
    """A broken promise of the protocol document (or an unusable server)."""


def log(msg: str) -> None:
    print(f"[ws_resume] {msg}", file=sys.stderr, flush=True)


# --- REST, standard library only -----------------------------------------------------------


def http_json(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=REPLY_LIMIT_S) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raise Violation(f"{method} {path}: HTTP {e.code}: {e.read()[:500]!r}") from None
    except (urllib.error.URLError, TimeoutError) as e:
        raise Violation(f"{method} {path}: {e}") from None
    return json.loads(raw) if raw else None


def gate_slug(entry: dict[str, Any]) -> str | None:
    # The document gives no schema for GET /api/v1/gates: accept the names a gate goes by in
    # the WebSocket messages (`gate`) and the usual REST ones.
    for key in ("gate", "slug", "id"):
        if isinstance(entry.get(key), str):
            return entry[key]
    return None


def pick_closed_gate(base: str, token: str) -> str:
    listing = http_json(base, "GET", "/api/v1/gates", token=token)
    entries = listing if isinstance(listing, list) else (
        listing.get("gates") or listing.get("items") or listing.get("data") or [])
    for entry in entries:
        if isinstance(entry, dict) and entry.get("state") == "closed" and gate_slug(entry):
            return gate_slug(entry)  # type: ignore[return-value]
    raise Violation(f"no closed gate in GET /api/v1/gates: {json.dumps(listing)[:800]}")


# --- One WebSocket session ------------------------------------------------------------------


class Session:
    """One connection, with every check that holds for any connection: per gate, events
    after the snapshot are contiguous in `seq`; per command, at most one `accepted` and
    exactly one terminal ack, the terminal one last."""

    def __init__(self, name: str, ws: ClientConnection, gate: str) -> None:
        self.name = name
        self.ws = ws
        self.gate = gate
        self.last: int | None = None  # the highest seq applied for `gate`
        self.state: str | None = None
        self.events: list[dict[str, Any]] = []  # events of `gate`, in arrival order
        self.acks: dict[str, list[str]] = {}  # command id -> statuses, in order
        self.finished: dict[str, dict[str, Any]] = {}  # command id -> command_finished event
        self.errors: list[dict[str, Any]] = []
        self.snapshot: dict[str, Any] | None = None
        self.expected_first: int | None = None  # the seq the first event must carry

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(msg))

    async def recv(self, deadline: float, what: str) -> dict[str, Any]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Violation(f"{self.name}: timed out waiting for {what}")
        try:
            raw = await asyncio.wait_for(self.ws.recv(), left)
        except asyncio.TimeoutError:
            raise Violation(f"{self.name}: timed out waiting for {what}") from None
        except ConnectionClosed as e:
            raise Violation(f"{self.name}: connection closed while waiting for {what}: {e}") from None
        if not isinstance(raw, str):
            raise Violation(f"{self.name}: a binary frame from the server: {raw!r}")
        msg = json.loads(raw)
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise Violation(f"{self.name}: not a message object: {raw}")
        self.apply(msg)
        return msg

    def apply(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "event" and msg.get("gate") == self.gate:
            self.apply_event(msg)
        elif kind == "ack":
            self.apply_ack(msg)
        elif kind == "error":
            self.errors.append(msg)
        elif kind == "snapshot" and msg.get("coalesced"):
            raise Violation(f"{self.name}: a coalesced snapshot for a client that keeps up: {msg}")

    def apply_event(self, ev: dict[str, Any]) -> None:
        seq = ev.get("seq")
        if not isinstance(seq, int):
            raise Violation(f"{self.name}: an event without an integer seq: {ev}")
        if self.last is None:
            raise Violation(f"{self.name}: an event before the snapshot: {ev}")
        expected = self.expected_first if self.expected_first is not None else self.last + 1
        if seq != expected:
            what = "duplicate" if seq < expected else "gap"
            raise Violation(f"{self.name}: {what}: event seq {seq}, expected {expected} "
                            f"(seqs so far {[e['seq'] for e in self.events]})")
        self.expected_first = None
        self.last = seq
        self.state = ev.get("state")
        self.events.append(ev)
        if ev.get("kind") == "command_finished" and isinstance(ev.get("command"), str):
            self.finished[ev["command"].lower()] = ev

    def apply_ack(self, ack: dict[str, Any]) -> None:
        cid = str(ack.get("id", "")).lower()
        status = ack.get("status")
        seen = self.acks.setdefault(cid, [])
        if any(s in TERMINAL for s in seen):
            raise Violation(f"{self.name}: an ack after the terminal one for {cid}: {seen} then {ack}")
        if status == "accepted" and "accepted" in seen:
            raise Violation(f"{self.name}: a second accepted for {cid}")
        if status not in TERMINAL | {"accepted"}:
            raise Violation(f"{self.name}: unknown ack status: {ack}")
        seen.append(status)

    async def until(self, done: Callable[[], bool], limit: float, what: str) -> None:
        deadline = time.monotonic() + limit
        while not done():
            await self.recv(deadline, what)
        if self.errors:
            raise Violation(f"{self.name}: unexpected errors: {self.errors}")

    async def request(self, msg: dict[str, Any], answer: str) -> dict[str, Any]:
        """Sends `msg` (with an id) and waits for the reply of type `answer` echoing the id."""
        await self.send(msg)
        deadline = time.monotonic() + REPLY_LIMIT_S
        while True:
            reply = await self.recv(deadline, f"{answer} to {msg['type']}")
            if reply.get("id") != msg.get("id"):
                continue
            if reply["type"] == answer:
                return reply
            raise Violation(f"{self.name}: {msg['type']} answered with {reply}")

    async def auth(self, token: str) -> dict[str, Any]:
        return await self.request({"type": "auth", "id": f"auth-{uuid.uuid4().hex[:8]}",
                                   "token": token}, "auth_ok")

    async def subscribe(self, since: int | None = None) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": "subscribe", "id": f"sub-{uuid.uuid4().hex[:8]}",
                               "gates": [self.gate]}
        if since is not None:
            msg["since"] = {self.gate: since}
        snap = await self.request(msg, "snapshot")
        entries = [g for g in snap.get("gates", []) if g.get("gate") == self.gate]
        if len(entries) != 1:
            raise Violation(f"{self.name}: snapshot without exactly one entry for {self.gate}: {snap}")
        entry = entries[0]
        seq = entry["seq"]
        self.snapshot = entry
        self.state = entry["state"]
        # Section 6, step 3.
        if since is None or seq <= since:
            self.last = seq
        elif "replay_from" in entry:
            self.last = entry["replay_from"] - 1
            self.expected_first = entry["replay_from"]
        else:
            self.last = seq
        return entry

    async def command(self, action: str, cid: str | None = None) -> str:
        cid = cid or str(uuid.uuid4())
        await self.send({"type": "command", "id": cid, "gate": self.gate, "action": action})
        return cid

    def ack_statuses(self, cid: str) -> list[str]:
        return self.acks.get(cid.lower(), [])

    def terminal(self, cid: str) -> str | None:
        return next((s for s in self.ack_statuses(cid) if s in TERMINAL), None)

    def abort(self) -> None:
        """Drops the TCP connection without a close handshake, as a phone in a tunnel would."""
        self.ws.transport.abort()


async def open_session(ws_url: str, name: str, gate: str, token: str) -> Session:
    ws = await connect(ws_url, subprotocols=[SUBPROTOCOL], compression=None, proxy=None,
                       open_timeout=REPLY_LIMIT_S, close_timeout=2, ping_interval=None)
    if ws.subprotocol != SUBPROTOCOL:
        await ws.close()
        raise Violation(f"{name}: the server selected subprotocol {ws.subprotocol!r}")
    session = Session(name, ws, gate)
    ok = await session.auth(token)
    if ok.get("role") not in ("admin", "operator", "resident", "viewer"):
        raise Violation(f"{name}: auth_ok with an unknown role: {ok}")
    return session


# --- The scenario ---------------------------------------------------------------------------


async def scenario(args: argparse.Namespace) -> dict[str, Any]:
    base = args.base.rstrip("/")
    ws_url = "ws" + base[len("http"):] + "/api/v1/ws"
    login = http_json(base, "POST", "/api/v1/auth/login",
                      {"username": args.user, "password": args.password})
    token, refresh = login["access_token"], login["refresh_token"]
    gate = args.gate or pick_closed_gate(base, token)
    log(f"gate {gate}")

    # 1-2. Subscribe, open, watch it open.
    a = await open_session(ws_url, "first connection", gate, token)
    entry = await a.subscribe()
    if entry["state"] != "closed":
        raise Violation(f"gate {gate} is {entry['state']}, not closed: {entry}")
    start_seq = entry["seq"]
    opened = await a.command("open")
    await a.until(lambda: a.terminal(opened) is not None and a.state == "open"
                  and opened in a.finished, MOVE_LIMIT_S, "the gate to open")
    if a.ack_statuses(opened) != ["accepted", "completed"]:
        raise Violation(f"open: acks {a.ack_statuses(opened)}, expected accepted then completed")
    if a.finished[opened].get("status") != "completed":
        raise Violation(f"open: command_finished says {a.finished[opened]}")
    # Exactly one terminal ack: nothing more for this command may follow.
    try:
        await a.until(lambda: False, 0.5, "")
    except Violation as e:
        if "timed out" not in str(e):
            raise

    # 3. Close, and drop the connection while the gate is closing.
    closed = await a.command("close")
    await a.until(lambda: "accepted" in a.ack_statuses(closed) and a.state == "closing",
                  MOVE_LIMIT_S, "the gate to start closing")
    last_seq = a.last
    assert last_seq is not None
    a.abort()
    log(f"dropped the first connection at seq {last_seq} (gate closing)")
    first_events = [e["seq"] for e in a.events]

    # 4. Meanwhile, a second connection moves the gate further: once closed, open it.
    b = await open_session(ws_url, "second connection", gate, token)
    await b.subscribe()
    await b.until(lambda: b.state == "closed", MOVE_LIMIT_S, "the gate to finish closing")
    reopened = await b.command("open")
    await b.until(lambda: "accepted" in b.ack_statuses(reopened) and b.state == "opening",
                  MOVE_LIMIT_S, "the gate to start opening again")
    log(f"second connection: gate opening again at seq {b.last}")

    # 5. Refresh the token, reconnect, resume with `since`.
    fresh = http_json(base, "POST", "/api/v1/auth/refresh", {"refresh_token": refresh})
    token = fresh["access_token"]
    c = await open_session(ws_url, "resumed connection", gate, token)
    entry = await c.subscribe(since=last_seq)
    if entry["seq"] <= last_seq:
        raise Violation(f"resume: snapshot seq {entry['seq']} is not past since={last_seq}, "
                        f"though the gate moved: {entry}")
    if "replay_from" not in entry:
        raise Violation(f"resume: no replay_from although seq {entry['seq']} > since {last_seq}")
    if entry["replay_from"] != last_seq + 1:
        raise Violation(f"resume: replay_from {entry['replay_from']}, expected {last_seq + 1}")
    snapshot_seq = entry["seq"]
    await c.until(lambda: c.state == "open" and reopened in c.finished,
                  MOVE_LIMIT_S, "the gate to open again")
    if c.finished[reopened].get("status") != "completed":
        raise Violation(f"second open: command_finished says {c.finished[reopened]}")
    if closed not in c.finished:
        raise Violation(f"resume: no command_finished for the dropped close {closed} "
                        f"among {[e['seq'] for e in c.events]}")
    resumed_events = [e["seq"] for e in c.events]
    replayed = [s for s in resumed_events if s <= snapshot_seq]
    live = [s for s in resumed_events if s > snapshot_seq]
    if not replayed or replayed[0] != last_seq + 1 or replayed[-1] != snapshot_seq:
        raise Violation(f"resume: replay {replayed}, expected {last_seq + 1}..{snapshot_seq}")

    # The second connection's command: exactly one accepted and one terminal ack.
    await b.until(lambda: b.terminal(reopened) is not None, REPLY_LIMIT_S,
                  "the terminal ack of the second open")
    if b.ack_statuses(reopened) != ["accepted", "completed"]:
        raise Violation(f"second open: acks {b.ack_statuses(reopened)}")
    await b.ws.close()

    # 6. The close whose acks were lost in the drop, repeated with the same id: its outcome
    # comes back as one terminal ack, and the gate does not move again.
    final_seq = c.last
    await c.command("close", closed)
    await c.until(lambda: c.terminal(closed) is not None, REPLY_LIMIT_S,
                  "the outcome of the repeated close")
    if c.ack_statuses(closed) != [c.finished[closed]["status"]]:
        raise Violation(f"repeated close: acks {c.ack_statuses(closed)}, expected only "
                        f"{c.finished[closed]['status']!r}")
    try:
        await c.until(lambda: False, 1.5, "")
    except Violation as e:
        if "timed out" not in str(e):
            raise
    if c.last != final_seq or c.state != "open":
        raise Violation(f"the repeated close moved the gate: events {[e['seq'] for e in c.events]}")
    await c.ws.close()

    # The history over REST is what the resumed connection saw.
    history = http_json(base, "GET",
                        f"/api/v1/gates/{urllib.parse.quote(gate)}/events?after={last_seq}&limit=500",
                        token=token)
    rest_seqs = [e["seq"] for e in history["events"]]
    if rest_seqs != resumed_events:
        raise Violation(f"REST history after {last_seq} is {rest_seqs}, the resumed connection "
                        f"saw {resumed_events}")
    for got, want in zip(c.events, history["events"]):
        if (got["kind"], got["state"], got["cause"]) != (want["kind"], want["state"], want["cause"]):
            raise Violation(f"event {got['seq']} differs from REST: {got} vs {want}")

    return {
        "ok": True,
        "gate": gate,
        "start_seq": start_seq,
        "first_connection": first_events,
        "dropped_at": last_seq,
        "snapshot_seq": snapshot_seq,
        "replay_from": entry["replay_from"],
        "replayed": replayed,
        "live": live,
        "final_seq": final_seq,
        "final_state": c.state,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="http://HOST:PORT of the API")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--gate", help="a closed gate (default: the first closed one listed)")
    args = parser.parse_args()
    started = time.monotonic()
    try:
        summary = asyncio.run(asyncio.wait_for(scenario(args), TOTAL_LIMIT_S))
    except Violation as e:
        print(f"ws_resume: FAILED: {e}", file=sys.stderr)
        return 1
    except (asyncio.TimeoutError, TimeoutError):
        print(f"ws_resume: FAILED: the run took longer than {TOTAL_LIMIT_S} s", file=sys.stderr)
        return 1
    summary["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
