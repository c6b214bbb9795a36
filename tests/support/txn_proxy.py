"""A MongoDB wire-protocol proxy that runs transactions one at a time.

The MongoDB emulator the tests use (nx-27017) keeps every logical database on one SQLite
connection: two sessions' transactions that overlap nest into each other, and one's commit or
abort takes the other's writes with it. A real MongoDB isolates them. The multi-node tests put
this proxy between the nodes and the emulator so overlapping transactions never reach it:

- while one session (lsid) has a transaction open in a database, writes and transactions of every
  other session in that database wait (reads pass: holding them could exhaust a client's
  connection pool while the transaction still needs a connection);
- when the connection that carried an open transaction closes (its node was killed), the proxy
  aborts the transaction upstream, as a real server would when the session is gone.

Commands without a session (handshakes, monitoring) always pass. Test support only: nothing in
confab depends on it.

Usage: python txn_proxy.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT
Prints "ready" once it listens.
"""

import asyncio
import struct
import sys

import bson

OP_MSG = 2013
# Commands that never wait for another session's transaction.
READS = {"find", "aggregate", "count", "distinct", "getMore", "killCursors", "listCollections",
         "listIndexes", "listDatabases", "hello", "isMaster", "ismaster", "ping", "buildInfo",
         "endSessions", "dbStats", "collStats", "serverStatus"}
HEADER = struct.Struct("<iiii")


class Gate:
    """Per logical database: the session whose transaction is open, if any."""

    def __init__(self):
        self.owner = {}  # db -> [lsid, txnNumber, connection]
        self.db_of = {}  # lsid -> db of its open transaction
        self.cond = asyncio.Condition()

    async def admit(self, lsid, doc, conn):
        starting = bool(doc.get("startTransaction"))
        command = next(iter(doc), "")
        if not starting and command in READS and lsid not in self.db_of:
            return
        async with self.cond:
            db = doc.get("$db") if starting else self.db_of.get(lsid, doc.get("$db"))
            while db in self.owner and self.owner[db][0] != lsid:
                await self.cond.wait()
            if starting:
                self.owner[db] = [lsid, doc.get("txnNumber"), conn]
                self.db_of[lsid] = db
            elif db in self.owner:
                self.owner[db][2] = conn

    async def release(self, lsid):
        async with self.cond:
            db = self.db_of.pop(lsid, None)
            if db is not None and db in self.owner and self.owner[db][0] == lsid:
                del self.owner[db]
                self.cond.notify_all()

    def orphans(self, conn):
        """Open transactions whose last command came over `conn`."""
        return [(o[0], o[1]) for o in self.owner.values() if o[2] is conn]


def parse(body):
    """The command document of an OP_MSG body (after the header), or None."""
    if len(body) < 5:
        return None
    pos = 4  # flagBits
    while pos < len(body):
        kind = body[pos]
        pos += 1
        size = struct.unpack_from("<i", body, pos)[0]
        if kind == 0:
            return bson.decode(body[pos:pos + size])
        pos += size
    return None


async def read_msg(reader):
    head = await reader.readexactly(16)
    length, _, _, op = HEADER.unpack(head)
    body = await reader.readexactly(length - 16)
    return head, op, body


async def abort_upstream(host, port, owner):
    lsid, txn = owner
    doc = {"abortTransaction": 1, "lsid": {"id": bson.Binary(lsid, 4)}, "autocommit": False, "$db": "admin"}
    if txn is not None:
        doc["txnNumber"] = txn
    payload = struct.pack("<i", 0) + b"\x00" + bson.encode(doc)
    msg = HEADER.pack(16 + len(payload), 1, 0, OP_MSG) + payload
    try:
        r, w = await asyncio.open_connection(host, port)
        w.write(msg)
        await w.drain()
        await asyncio.wait_for(read_msg(r), 5)
        w.close()
    except Exception as e:  # noqa: BLE001 - best effort
        print(f"abort of an orphaned transaction failed: {e}", file=sys.stderr)


async def serve(gate, host, port, reader, writer):
    up_r, up_w = await asyncio.open_connection(host, port)
    me = object()
    try:
        while True:
            head, op, body = await read_msg(reader)
            lsid = None
            ending = False
            if op == OP_MSG:
                doc = parse(body)
                if doc is not None and isinstance(doc.get("lsid"), dict):
                    lsid = bytes(doc["lsid"].get("id", b""))
                    await gate.admit(lsid, doc, me)
                    ending = "commitTransaction" in doc or "abortTransaction" in doc
            up_w.write(head + body)
            await up_w.drain()
            rhead, _, rbody = await read_msg(up_r)
            writer.write(rhead + rbody)
            await writer.drain()
            if ending and lsid is not None:
                await gate.release(lsid)
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        for c in (writer, up_w):
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        for owner in gate.orphans(me):
            await abort_upstream(host, port, owner)
            await gate.release(owner[0])


async def main():
    listen, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    gate = Gate()
    server = await asyncio.start_server(lambda r, w: serve(gate, host, port, r, w), "127.0.0.1", listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
