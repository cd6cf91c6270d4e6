// The chat connection: one WebSocket to /chat speaking the JSON protocol of wirecat's chat
// (one JSON object per text message), with automatic reconnection and resume.
//
// Reconnection: exponential backoff with jitter (0.5 s doubling to 15 s). After a reconnect
// the client says hello again (token included, kept in memory only: never in a URL or a
// log) and rejoins its rooms with "since": the last message id it saw in each, so that
// whatever was said meanwhile is shown once (the history a join returns is filtered by id
// here too, for servers that ignore "since"). Ids increase per room (with a Redis hub each
// room counts on its own), so what was seen is keyed by room and id. A "joined" reply with
// "gap": true says the server no longer holds everything since that id.

const MIN_BACKOFF = 500;
const MAX_BACKOFF = 15000;

export class ChatClient extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.ws = null;
    this.nick = null;
    this.token = null;
    this.wanted = new Set();  // rooms to be in (rejoined after a reconnect)
    this.lastId = new Map();  // room -> highest message id seen
    this.seen = new Set();    // "room id" keys already shown (join/part/message/dm events)
    this.backoff = MIN_BACKOFF;
    this.timer = null;
    this.closedByUser = false;
    this.loggedIn = false;
    this.everLoggedIn = false;
    this.refs = 0;
    this.pending = new Map(); // ref -> the command (to show our DMs when "sent" confirms)
  }

  start(nick, token) {
    this.nick = nick || null;
    this.token = token || null;
    this.closedByUser = false;
    this.open();
  }

  open() {
    clearTimeout(this.timer);
    this.state("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this.retry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      const hello = { type: "hello", nick: this.nick };
      if (this.token) hello.token = this.token;
      this.send(hello);
    };
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (err) {
        return;
      }
      if (msg && typeof msg === "object") this.handle(msg);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.loggedIn = false;
      this.emit("disconnected", { code: ev.code, reason: ev.reason });
      if (!this.closedByUser) this.retry();
      else this.state("offline");
    };
  }

  retry() {
    const delay = Math.round(this.backoff * (0.75 + Math.random() * 0.5));
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF);
    this.state("reconnecting", delay);
    this.timer = setTimeout(() => this.open(), delay);
  }

  // Tests and the "Reconnect" path: drop the socket as a network failure would.
  drop() {
    if (this.ws) this.ws.close(4000, "dropped");
  }

  close() {
    this.closedByUser = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, "bye");
  }

  state(name, delay) {
    this.emit("state", { state: name, delay });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  send(obj) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  command(obj) {
    obj.ref = ++this.refs;
    this.pending.set(obj.ref, obj);
    if (this.pending.size > 200) this.pending.delete(this.pending.keys().next().value);
    return this.send(obj);
  }

  join(room) {
    this.wanted.add(room);
    const cmd = { type: "join", room };
    if (this.lastId.has(room)) cmd.since = this.lastId.get(room);
    return this.command(cmd);
  }

  part(room) {
    this.wanted.delete(room);
    return this.command({ type: "part", room });
  }

  note(room, id) {
    if (typeof id !== "number") return true;
    const key = `${room || "dm"} ${id}`;
    if (this.seen.has(key)) return false;
    this.seen.add(key);
    if (this.seen.size > 5000) this.seen.delete(this.seen.values().next().value);
    if (room && id > (this.lastId.get(room) || 0)) this.lastId.set(room, id);
    return true;
  }

  handle(msg) {
    switch (msg.type) {
      case "welcome": {
        const again = this.everLoggedIn;
        this.nick = msg.nick;
        this.loggedIn = this.everLoggedIn = true;
        this.backoff = MIN_BACKOFF;
        this.state("online");
        this.emit("welcome", msg);
        const rooms = this.wanted.size ? [...this.wanted] : [msg.default_room || "#lobby"];
        for (const room of rooms) this.join(room);
        if (again) this.emit("resumed", {});
        return;
      }
      case "joined": {
        const fresh = (msg.history || []).filter((m) => this.note(m.room, m.id));
        this.emit("joined", {
          room: msg.room,
          members: msg.members || [],
          history: fresh,
          gap: msg.gap === true,
        });
        return;
      }
      case "message":
      case "join":
      case "part":
      case "kick":
      case "close":
        if (!this.note(msg.room, msg.id)) return;
        this.emit(msg.type === "message" ? "message" : "presence", msg);
        return;
      case "dm":
        if (!this.note(null, msg.id)) return;
        this.emit("dm", msg);
        return;
      case "sent": {
        const cmd = this.pending.get(msg.ref);
        this.pending.delete(msg.ref);
        if (cmd && cmd.type === "dm") {
          this.note(null, msg.id);
          this.emit("dm", { id: msg.id, ts: msg.ts, from: this.nick, to: cmd.to, text: cmd.text });
        }
        return;
      }
      case "error": {
        const cmd = this.pending.get(msg.ref);
        this.pending.delete(msg.ref);
        if (!this.loggedIn && (msg.code === "nick_taken" || msg.code === "invalid_nick")) {
          // After a drop, the server may not have seen our old socket go yet: retry.
          if (this.everLoggedIn && msg.code === "nick_taken") {
            this.ws.close(4001, "retry");
            return;
          }
        }
        if (cmd && cmd.type === "join") this.wanted.delete(cmd.room);
        this.emit("error", msg);
        if (msg.code === "auth_failed" || msg.code === "auth_required") {
          this.closedByUser = true;
        }
        return;
      }
      case "parted":
        this.emit("parted", msg);
        return;
      default:
        this.emit(msg.type, msg);
    }
  }
}
