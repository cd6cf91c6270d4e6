// Minimal echo server on Node.js `net`. Reference peer for bench/run.py.
//
// Usage: node echo.js [HOST] [PORT]   (PORT 0: any; prints "LISTENING <port>")
'use strict';
const net = require('net');

const host = process.argv[2] || '127.0.0.1';
const port = Number(process.argv[3] || 0);

const server = net.createServer({ noDelay: true }, (socket) => {
  socket.setNoDelay(true);
  socket.on('error', () => socket.destroy());
  socket.pipe(socket);
});
server.listen({ host, port, backlog: 4096 }, () => {
  console.log(`LISTENING ${server.address().port}`);
});
