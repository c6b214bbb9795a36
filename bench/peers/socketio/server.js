// The socket.io baseline of confab's benchmarks (bench/src/wire.rs speaks to it).
//
//   PORT=0 HOST=127.0.0.1 [REDIS_URL=redis://127.0.0.1:6379] node server.js
//
// socket.io 4, WebSocket transport only, per-message deflate off. A client connects to
// /socket.io/?EIO=4&transport=websocket&user=<id>[&room=<name>] and is put in room "u:<id>"
// (one-to-one) and "r:<name>" (a group). Events:
//   "g" {r, p}   -> every other socket in room "r:<r>" gets "m" with the same object
//   "d" {to, p}  -> every socket of user <to> gets "m" with the same object
// With REDIS_URL, rooms span every node started with the same URL (@socket.io/redis-adapter 8).
// Prints "socketio listening on ADDR" once it accepts connections.
"use strict";

const http = require("http");
const { Server } = require("socket.io");

async function main() {
  const port = Number(process.env.PORT || 0);
  const host = process.env.HOST || "127.0.0.1";
  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    transports: ["websocket"],
    perMessageDeflate: false,
    httpCompression: false,
    serveClient: false,
    cors: { origin: false },
  });
  if (process.env.REDIS_URL) {
    const { createClient } = require("redis");
    const { createAdapter } = require("@socket.io/redis-adapter");
    const pub = createClient({ url: process.env.REDIS_URL });
    const sub = pub.duplicate();
    for (const c of [pub, sub]) c.on("error", (e) => console.error("redis:", e.message));
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  io.on("connection", (socket) => {
    const { user, room } = socket.handshake.query;
    if (user) socket.join("u:" + user);
    if (room) socket.join("r:" + room);
    socket.on("g", (d) => {
      if (d && d.r) socket.to("r:" + d.r).emit("m", d);
    });
    socket.on("d", (d) => {
      if (d && d.to) socket.to("u:" + d.to).emit("m", d);
    });
  });
  httpServer.listen({ port, host, backlog: 4096 }, () => {
    const a = httpServer.address();
    process.stdout.write(`socketio listening on ${a.address}:${a.port}\n`);
  });
  for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
