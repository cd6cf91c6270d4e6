// A Node `ws` client for wirecat's interop tests.
// Usage: node ws_client.js URL MODE
//   MODE echo: sends text and binary messages (sizes 0..70000), checks each echo.
//   MODE chat: hello as "node", join #lobby, say "hello from node", wait for its message.
// Prints one JSON line with the result; exits 0 on success.
"use strict";
const WebSocket = require("ws");
const [url, mode] = process.argv.slice(2);
const ws = new WebSocket(url);
const fail = (why) => { console.log(JSON.stringify({ ok: false, why })); process.exit(1); };
setTimeout(() => fail("timeout"), 10000).unref();

ws.on("error", (err) => fail(String(err)));
ws.on("open", () => {
  if (mode === "echo") {
    const sizes = [0, 1, 125, 126, 65535, 65536];
    const queue = [];
    for (const n of sizes) {
      queue.push({ data: "x".repeat(n), binary: false });
      queue.push({ data: Buffer.alloc(n, 7), binary: true });
    }
    let i = 0;
    const next = () => {
      if (i === queue.length) { ws.close(1000, "done"); return; }
      const m = queue[i];
      ws.send(m.data, { binary: m.binary });
    };
    ws.on("message", (data, isBinary) => {
      const m = queue[i];
      const got = isBinary ? Buffer.from(data) : data.toString();
      const same = isBinary ? m.binary && Buffer.compare(got, m.data) === 0 : !m.binary && got === m.data;
      if (!same) fail(`message ${i} differs`);
      i += 1;
      next();
    });
    ws.on("close", (code) => {
      console.log(JSON.stringify({ ok: i === queue.length && code === 1000, messages: i, code }));
      process.exit(i === queue.length && code === 1000 ? 0 : 1);
    });
    next();
  } else {
    const seen = [];
    ws.on("message", (data) => {
      const m = JSON.parse(data.toString());
      seen.push(m.type);
      if (m.type === "welcome") ws.send(JSON.stringify({ type: "join", room: "#lobby" }));
      if (m.type === "joined") ws.send(JSON.stringify({ type: "say", room: "#lobby", text: "hello from node" }));
      if (m.type === "message" && m.text === "hello from node") {
        console.log(JSON.stringify({ ok: true, id: m.id, seen }));
        ws.close(1000);
      }
    });
    ws.on("close", () => process.exit(0));
    ws.send(JSON.stringify({ type: "hello", nick: "node" }));
  }
});
