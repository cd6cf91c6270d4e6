// WebSocket broadcast server on Node.js `ws` (npm, installed in tests/node): every message
// goes to every other client, as in the `ws` README's "broadcast to all connected clients
// except the sender" example. Reference peer for bench/run.py's ws chat fan-out rows (the
// load generator's `lines` protocol: each message is one text frame holding the text).
// Usage: node ws_broadcast.js [HOST] [PORT]  (prints "LISTENING <port>")
'use strict';
const path = require('path');
const WebSocket = require(path.join(__dirname, '..', '..', 'tests', 'node', 'node_modules', 'ws'));

const host = process.argv[2] || '127.0.0.1';
const port = Number(process.argv[3] || 0);
const wss = new WebSocket.Server({
  host, port, backlog: 4096, perMessageDeflate: false, maxPayload: 64 * 1024,
});
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    for (const client of wss.clients) {
      if (client !== ws && client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    }
  });
  ws.on('error', () => ws.terminate());
});
wss.on('listening', () => console.log(`LISTENING ${wss.address().port}`));
