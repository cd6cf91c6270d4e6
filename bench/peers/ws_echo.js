// WebSocket echo server on Node.js `ws` (npm, installed in tests/node). Reference peer for
// bench/run.py's ws part. Usage: node ws_echo.js [HOST] [PORT]  (prints "LISTENING <port>")
'use strict';
const path = require('path');
const WebSocket = require(path.join(__dirname, '..', '..', 'tests', 'node', 'node_modules', 'ws'));

const host = process.argv[2] || '127.0.0.1';
const port = Number(process.argv[3] || 0);
const wss = new WebSocket.Server({ host, port, backlog: 4096, perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => ws.terminate());
});
wss.on('listening', () => console.log(`LISTENING ${wss.address().port}`));
