#!/usr/bin/env python3
"""An independent protocol-v1 client in Python (standard library only).

It speaks RFC 6455 itself, reads nothing but docs/protocol.md's rules, and checks a
running messenger-server end to end: welcome, threads, send/receive, idempotency, acks,
receipts, history paging, presence, typing, errors and req_id echo.

Usage: protocol_check.py HOST:PORT   (the server must run with dev auth)
"""

import base64
import json
import os
import socket
import struct
import sys
import time
import urllib.parse

ADDR = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8080"
HOST, PORT = ADDR.rsplit(":", 1)
PORT = int(PORT)
RUN = "py%d" % (int(time.time() * 1000) % 10_000_000)
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


class WS:
    """A minimal WebSocket client: text frames, masking, ping/pong, close."""

    def __init__(self, token, path="/ws"):
        self.sock = socket.create_connection((HOST, PORT), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (
            f"GET {path}?token={urllib.parse.quote(token)} HTTP/1.1\r\nHost: {HOST}:{PORT}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                break
            head += chunk
        self.status = int(head.split(b" ", 2)[1]) if head else 0
        self.buf = b""

    def send(self, obj):
        self._frame(0x1, json.dumps(obj).encode())

    def _frame(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            hdr = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(hdr + mask + masked)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self, timeout=5.0):
        """The next text frame as a dict; ('close', code) for a close frame."""
        self.sock.settimeout(timeout)
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(n)
            if opcode == 0x1:
                return json.loads(payload)
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return ("close", code)
            if opcode == 0x9:
                self._frame(0xA, payload)

    def silent(self, wait=0.3):
        try:
            f = self.recv(timeout=wait)
            raise AssertionError(f"expected silence, got {f}")
        except socket.timeout:
            return True

    def close(self):
        try:
            self._frame(0x8, struct.pack("!H", 1000))
        finally:
            self.sock.close()


def user(name):
    return f"{name}_{RUN}"


def connect(name):
    ws = WS(user(name))
    check(ws.status == 101, f"upgrade for {name}: {ws.status}")
    w = ws.recv()
    check(w["type"] == "welcome" and w["user_id"] == user(name), f"welcome {w}")
    check(w["session_id"].startswith("s-") and isinstance(w["server_time"], int), "welcome fields")
    return ws


def main():
    # Auth before the upgrade.
    check(WS("").status == 401, "missing token is 401")
    check(WS("not a valid id!").status == 401, "bad token is 401")

    alice, bob = connect("alice"), connect("bob")
    alice2 = connect("alice")

    # Direct thread: canonical id on both sides.
    alice.send({"type": "create_thread", "req_id": "c1", "kind": "direct", "members": [user("bob")]})
    t = alice.recv()
    check(t["type"] == "thread" and t["req_id"] == "c1" and t["kind"] == "direct", f"thread {t}")
    tid = t["thread_id"]
    check(sorted(t["members"]) == sorted([user("alice"), user("bob")]), "direct members")
    check(bob.recv()["thread_id"] == tid, "bob learns of the thread")
    check(alice2.recv()["thread_id"] == tid, "alice's other session learns of the thread")
    bob.send({"type": "create_thread", "req_id": 2, "kind": "direct", "members": [user("alice")]})
    again = bob.recv()
    check(again["thread_id"] == tid and again["req_id"] == 2, "same direct thread from the other side")

    # Send, receive, idempotency.
    alice.send({"type": "send_message", "req_id": 10, "thread_id": tid, "temp_id": "tmp-1", "text": "héllo"})
    sent = alice.recv()
    check(sent["type"] == "message_sent" and sent["req_id"] == 10 and sent["seq"] == 1, f"sent {sent}")
    check(isinstance(sent["message_id"], str) and sent["message_id"].isdigit(), "message_id is a decimal string")
    for ws in (bob, alice2):
        r = ws.recv()
        check(r["type"] == "receive_message" and r["message_id"] == sent["message_id"], f"receive {r}")
        check(r["text"] == "héllo" and r["sender_id"] == user("alice") and r["seq"] == 1, "receive fields")
    alice.send({"type": "send_message", "thread_id": tid, "temp_id": "tmp-1", "text": "héllo"})
    dup = alice.recv()
    check(dup["message_id"] == sent["message_id"] and dup["seq"] == 1, "idempotent resend")
    bob.silent()

    # Acks: DELIVERED to the sender; READ to the sender and the acker's other sessions.
    bob.send({"type": "message_ack", "thread_id": tid, "message_id": sent["message_id"], "status": "READ"})
    for ws in (alice, alice2):
        a = ws.recv()
        check(a["type"] == "message_ack" and a["status"] == "READ" and a["user_id"] == user("bob"), f"ack {a}")
        check(a["seq"] == 1 and isinstance(a["at"], int), "ack fields")
    bob.send({"type": "list_threads", "req_id": "l"})
    lt = bob.recv()
    check(lt["type"] == "threads" and lt["req_id"] == "l", "threads reply")
    th = [x for x in lt["threads"] if x["thread_id"] == tid][0]
    check(th["last_seq"] == 1 and th["unread"] == 0, f"summary {th}")
    check(th["receipts"][user("bob")] == {"delivered_seq": 1, "read_seq": 1}, "READ implies DELIVERED")
    check(th["receipts"][user("alice")] == {"delivered_seq": 0, "read_seq": 0}, "every member has receipts")

    # History paging.
    for i in range(2, 8):
        alice.send({"type": "send_message", "thread_id": tid, "temp_id": f"tmp-{i}", "text": f"m{i}"})
        check(alice.recv()["seq"] == i, "seq is gapless")
        bob.recv()
        alice2.recv()
    bob.send({"type": "fetch_history", "req_id": "h", "thread_id": tid, "limit": 3})
    h = bob.recv()
    check([m["seq"] for m in h["messages"]] == [5, 6, 7] and h["has_more"] is True, f"latest page {h}")
    bob.send({"type": "fetch_history", "thread_id": tid, "before_seq": 5, "limit": 10})
    h = bob.recv()
    check([m["seq"] for m in h["messages"]] == [1, 2, 3, 4] and h["has_more"] is False, "before page")
    bob.send({"type": "fetch_history", "thread_id": tid, "after_seq": 5})
    h = bob.recv()
    check([m["seq"] for m in h["messages"]] == [6, 7] and h["has_more"] is False, "after page")

    # Groups.
    carol = connect("carol")
    alice.send({"type": "create_thread", "kind": "group", "members": [user("bob")], "title": "py"})
    g = alice.recv()
    gid = g["thread_id"]
    check(g["kind"] == "group" and g["title"] == "py", f"group {g}")
    bob.recv(), alice2.recv()
    bob.send({"type": "add_members", "req_id": "a", "thread_id": gid, "members": [user("carol")]})
    g2 = bob.recv()
    check(g2["req_id"] == "a" and user("carol") in g2["members"], "add_members reply")
    for ws in (alice, alice2, carol):
        check(ws.recv()["type"] == "thread", "members learn of the add")
    carol.send({"type": "leave_thread", "thread_id": gid})
    check(user("carol") not in carol.recv()["members"], "leave reply")
    for ws in (alice, alice2, bob):
        check(user("carol") not in ws.recv()["members"], "members learn of the leave")
    alice.send({"type": "leave_thread", "req_id": 3, "thread_id": tid})
    e = alice.recv()
    check(e["type"] == "error" and e["code"] == "forbidden" and e["req_id"] == 3, "direct cannot be left")

    # Presence and typing.
    alice.send({"type": "presence_subscribe", "req_id": "p", "user_ids": [user("bob")]})
    p = alice.recv()
    check(p["type"] == "presence" and p["status"] == "online" and p["req_id"] == "p", f"presence {p}")
    alice.send({"type": "presence_subscribe", "user_ids": [user("bob"), user("stranger")]})
    check(alice.recv()["code"] == "forbidden", "presence of a stranger is refused whole")
    bob.send({"type": "typing", "thread_id": tid, "typing": True})
    ty = alice.recv()
    check(ty == {"type": "typing", "thread_id": tid, "user_id": user("bob"), "typing": True}, f"typing {ty}")
    bob.close()
    p = alice.recv(timeout=10)
    check(p["status"] == "offline" and isinstance(p.get("last_seen"), int), f"offline {p}")

    # Errors.
    alice._frame(0x1, b"{nope")
    check(alice.recv()["code"] == "bad_request", "malformed JSON")
    alice.send({"type": "warp", "req_id": 9})
    e = alice.recv()
    check(e["code"] == "unknown_type" and e["req_id"] == 9, "unknown type")
    alice.send({"type": "send_message", "thread_id": tid, "temp_id": "x"})
    check(alice.recv()["code"] == "bad_request", "missing field")
    alice.send({"type": "send_message", "thread_id": "no spaces", "temp_id": "x", "text": "y"})
    check(alice.recv()["code"] == "bad_request", "bad id")
    carol.send({"type": "fetch_history", "thread_id": tid})
    check(carol.recv()["code"] == "forbidden", "not a member")
    alice.send({"type": "send_message", "thread_id": tid, "temp_id": "big", "text": "x" * (16 * 1024 + 1)})
    check(alice.recv()["code"] == "too_large", "text over 16 KiB")
    alice.send({"type": "ping", "req_id": "z"})
    check(alice.recv() == {"type": "pong", "req_id": "z"}, "ping/pong")

    # Oversized frame: 1009, and others keep working.
    big = WS(user("mallory"))
    big.recv()
    big._frame(0x1, b"x" * (70 * 1024))
    check(big.recv() == ("close", 1009), "oversized frame closes with 1009")
    alice.send({"type": "ping", "req_id": 1})
    check(alice.recv()["type"] == "pong", "server keeps serving others")

    print(f"{checks} passed, 0 failed")


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # report as a failed check with the reason
        print(f"protocol check failed after {checks} checks: {exc!r}", file=sys.stderr)
        print(f"{checks} passed, 1 failed")
        sys.exit(1)
