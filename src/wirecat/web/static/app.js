// The chat page. Every string from the network is rendered with textContent (never
// innerHTML), so a nick or a message is always text. No inline script: the page's CSP
// allows only this origin's files.

import { ChatClient } from "./client.js";

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(ts) {
  const d = ts ? new Date(ts) : new Date();
  if (Number.isNaN(d.getTime())) return "";
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/chat`;
const client = new ChatClient(wsUrl);
window.wirecatChat = client; // for tests and the console (holds no token once logged in)

const rooms = new Map(); // name -> { log: [nodes], unread: n, members: Set, dm: bool }
let current = null;

function room(name, dm = false) {
  let r = rooms.get(name);
  if (!r) {
    r = { nodes: [], unread: 0, members: new Set(), dm };
    rooms.set(name, r);
    renderRooms();
  }
  return r;
}

function renderRooms() {
  const list = $("rooms");
  list.replaceChildren();
  for (const [name, r] of rooms) {
    const li = el("li", name === current ? "current" : "");
    if (r.dm) li.classList.add("dm-room");
    li.dataset.room = name;
    li.append(el("span", "name", name), el("span", "unread", r.unread ? String(r.unread) : ""));
    li.addEventListener("click", () => show(name));
    list.append(li);
  }
}

function renderMembers() {
  const list = $("members");
  list.replaceChildren();
  const r = rooms.get(current);
  if (!r) return;
  for (const nick of [...r.members].sort()) list.append(el("li", "", nick));
}

function show(name) {
  current = name;
  const r = room(name, name.startsWith("@"));
  r.unread = 0;
  $("title").textContent = name;
  $("part").hidden = r.dm;
  const log = $("log");
  log.replaceChildren(...r.nodes);
  log.scrollTop = log.scrollHeight;
  renderRooms();
  renderMembers();
  $("text").focus();
}

function add(name, node) {
  const r = room(name, name.startsWith("@"));
  r.nodes.push(node);
  if (r.nodes.length > 1000) r.nodes.shift();
  if (name === current) {
    const log = $("log");
    const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(node);
    if (r.nodes.length >= 1000 && log.firstChild) log.firstChild.remove();
    if (atEnd) log.scrollTop = log.scrollHeight;
  } else {
    r.unread += 1;
    renderRooms();
  }
}

function line(m, kind) {
  const node = el("div", `msg ${kind || ""}`.trim());
  if (m.id !== undefined) node.dataset.id = String(m.id);
  node.append(el("span", "time", clock(m.ts)));
  return node;
}

function message(m) {
  const node = line(m, m.kind === "me" ? "me-action" : "");
  if (m.nick === client.nick) node.classList.add("mine");
  if (m.kind === "me") {
    node.append(el("span", "text", `* ${m.nick} ${m.text}`));
  } else {
    node.append(el("span", "nick", m.nick), el("span", "text", m.text));
  }
  add(m.room, node);
}

function notice(name, text, m = {}) {
  const node = line(m, "notice");
  node.append(el("span", "text", text));
  add(name, node);
}

client.addEventListener("state", (e) => {
  const { state, delay } = e.detail;
  const badge = $("status");
  badge.dataset.state = state;
  badge.textContent =
    state === "reconnecting" ? `reconnecting in ${Math.ceil(delay / 1000)} s` : state;
});

client.addEventListener("welcome", (e) => {
  $("login").hidden = true;
  $("chat").hidden = false;
  $("me").textContent = e.detail.user ? `${e.detail.nick} (signed in)` : e.detail.nick;
  $("token").value = ""; // the client keeps it in memory for reconnects; the form forgets it
});

client.addEventListener("joined", (e) => {
  const { room: name, members, history, gap } = e.detail;
  const r = room(name);
  r.members = new Set(members);
  if (gap) notice(name, "some messages sent while you were away are no longer available");
  for (const m of history) message(m);
  if (!current || current === name || !rooms.get(current)) show(name);
  else renderRooms();
  if (name === current) renderMembers();
});

client.addEventListener("message", (e) => message(e.detail));

client.addEventListener("presence", (e) => {
  const m = e.detail;
  const r = room(m.room);
  let text = "";
  if (m.type === "join") {
    r.members.add(m.nick);
    text = `${m.nick} joined ${m.room}`;
  } else if (m.type === "part") {
    r.members.delete(m.nick);
    text = `${m.nick} left ${m.room}` + (m.reason ? ` (${m.reason})` : "");
  } else if (m.type === "kick") {
    r.members.delete(m.nick);
    text = `${m.nick} was kicked by ${m.by}` + (m.reason ? ` (${m.reason})` : "");
  } else if (m.type === "close") {
    text = `${m.room} was closed by ${m.by}`;
  }
  notice(m.room, text, m);
  if (m.room === current) renderMembers();
});

client.addEventListener("nick", (e) => {
  const { old, new: renamed } = e.detail;
  for (const [name, r] of rooms) {
    if (r.members.delete(old)) {
      r.members.add(renamed);
      notice(name, `${old} is now ${renamed}`, e.detail);
    }
  }
  renderMembers();
});

client.addEventListener("renamed", (e) => {
  $("me").textContent = e.detail.nick;
});

client.addEventListener("dm", (e) => {
  const m = e.detail;
  const peer = m.from === client.nick ? m.to : m.from;
  const node = line(m, m.from === client.nick ? "mine" : "");
  node.append(el("span", "nick", m.from), el("span", "text", m.text));
  add(`@${peer}`, node);
});

client.addEventListener("parted", (e) => {
  const name = e.detail.room;
  rooms.delete(name);
  if (current === name) {
    const next = rooms.keys().next();
    current = null;
    if (!next.done) show(next.value);
    else $("log").replaceChildren();
  }
  renderRooms();
});

client.addEventListener("who", (e) => {
  const r = room(e.detail.room);
  r.members = new Set(e.detail.members || []);
  notice(e.detail.room, `here: ${[...r.members].join(", ")}`);
  renderMembers();
});

client.addEventListener("notice", (e) => notice(current || "#lobby", e.detail.text || ""));
client.addEventListener("shutdown", () => notice(current || "#lobby", "the server is restarting"));

client.addEventListener("error", (e) => {
  const { code, reason } = e.detail;
  if (!client.loggedIn) {
    $("login-error").textContent = reason || code;
    $("login").hidden = false;
    $("chat").hidden = true;
    return;
  }
  const node = line({}, "error");
  node.append(el("span", "text", `${code}: ${reason}`));
  add(current || "#lobby", node);
});

client.addEventListener("disconnected", () => {
  if (current) notice(current, "connection lost");
});

client.addEventListener("resumed", () => {
  if (current) notice(current, "reconnected");
});

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  client.start($("nick").value.trim(), $("token").value);
});

$("join-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  let name = $("join-room").value.trim();
  if (!name) return;
  if (!name.startsWith("#")) name = `#${name}`;
  client.join(name);
  $("join-room").value = "";
});

$("part").addEventListener("click", () => {
  if (current && !current.startsWith("@")) client.part(current);
});

$("toggle-members").addEventListener("click", () => $("members-pane").classList.toggle("open"));

$("input").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("text");
  const text = input.value;
  if (!text.trim()) return;
  input.value = "";
  const target = current || "#lobby";
  const cmd = text.match(/^\/(\w+)\s*(.*)$/s);
  if (!cmd || text.startsWith("//")) {
    const body = text.startsWith("//") ? text.slice(1) : text;
    if (target.startsWith("@")) client.command({ type: "dm", to: target.slice(1), text: body });
    else client.command({ type: "say", room: target, text: body });
    return;
  }
  const [, name, rest] = cmd;
  switch (name.toLowerCase()) {
    case "me":
      client.command({ type: "me", room: target, text: rest });
      break;
    case "msg": {
      const m = rest.match(/^(\S+)\s+(.+)$/s);
      if (m) client.command({ type: "dm", to: m[1], text: m[2] });
      break;
    }
    case "join":
      client.join(rest.startsWith("#") ? rest.trim() : `#${rest.trim()}`);
      break;
    case "part":
      client.part(rest.trim() || target);
      break;
    case "who":
      client.command({ type: "who", room: rest.trim() || target });
      break;
    case "nick":
      client.command({ type: "nick", nick: rest.trim() });
      break;
    case "quit":
      client.close();
      break;
    default:
      notice(target, "commands: /me TEXT, /msg NICK TEXT, /join #ROOM, /part, /who, /nick NEW, /quit");
  }
});
