// The browser chat that messenger-server serves at `/`: a small app on the SDK, no
// framework. Built into messenger-server/assets/web/chat.js by scripts/build-web.mjs.

import {
  IndexedDbStore,
  MemoryStore,
  MessengerClient,
  MessengerError,
  newTempId,
  type ClientStore,
  type ConnectionState,
  type Message,
  type Thread,
  type ThreadSummary,
} from "../src/index.js";

// ----- state -------------------------------------------------------------------------

interface LocalSend {
  tempId: string;
  text: string;
  status: "sending" | "failed";
  error?: string;
}

interface ThreadView {
  id: string;
  kind: Thread["kind"];
  title?: string;
  members: string[];
  lastSeq: number;
  /** Unread messages from others; the server's count at `listedSeq`, then kept live. */
  unread: number;
  /** The thread's last seq when the server last counted `unread` (list_threads). */
  listedSeq: number;
  /** Watermarks by member. */
  receipts: Map<string, { delivered: number; read: number }>;
  /** Messages known here, by seq. */
  messages: Map<number, Message>;
  last?: Message;
  pending: LocalSend[];
  pager?: ReturnType<MessengerClient["historyPager"]>;
  /** A history page arrived (opened offline: not yet, so it loads once connected). */
  historyLoaded: boolean;
  loadingOlder: boolean;
  /** Typing members and when their indicator expires. */
  typing: Map<string, number>;
}

let client: MessengerClient | undefined;
let store: IndexedDbStore | undefined;
let me = "";
const threads = new Map<string, ThreadView>();
const presence = new Map<string, { status: "online" | "offline"; lastSeen?: number }>();
const subscribed = new Set<string>();
let open: string | undefined;
let typingSentAt = 0;
let typingStop: ReturnType<typeof setTimeout> | undefined;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") el.className = v;
    else el.setAttribute(k, v);
  }
  el.append(...children);
  return el;
}

// ----- helpers -------------------------------------------------------------------------

function view(id: string): ThreadView {
  let t = threads.get(id);
  if (!t) {
    // Until the server lists it (offline, after a restart), a direct thread's id names
    // its two members.
    const dm = /^dm:([^:]+):([^:]+)$/.exec(id);
    t = {
      id,
      kind: dm ? "direct" : "group",
      members: dm ? [dm[1] as string, dm[2] as string] : [],
      lastSeq: 0,
      unread: 0,
      listedSeq: 0,
      receipts: new Map(),
      messages: new Map(),
      pending: [],
      historyLoaded: false,
      loadingOlder: false,
      typing: new Map(),
    };
    threads.set(id, t);
  }
  return t;
}

function others(t: ThreadView): string[] {
  return t.members.filter((m) => m !== me);
}

function threadName(t: ThreadView): string {
  if (t.kind === "direct") return others(t)[0] ?? t.id;
  return t.title || others(t).join(", ") || t.id;
}

function time(ms: number): string {
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  return today
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

/** Presence is known only while connected: offline, an old "online" would mislead. */
function presenceOf(user: string) {
  return client?.state.kind === "connected" ? presence.get(user) : undefined;
}

function lastSeenText(user: string): string {
  const p = presenceOf(user);
  if (!p) return "";
  if (p.status === "online") return "online";
  return p.lastSeen ? `last seen ${time(p.lastSeen)}` : "offline";
}

function watermark(t: ThreadView, user: string) {
  let w = t.receipts.get(user);
  if (!w) {
    w = { delivered: 0, read: 0 };
    t.receipts.set(user, w);
  }
  return w;
}

/** The status of one of my messages: sent, delivered to every other member, read by all. */
function status(t: ThreadView, seq: number): { status: string; mark: string; label: string } {
  const rest = others(t);
  const readBy = rest.filter((u) => (t.receipts.get(u)?.read ?? 0) >= seq);
  const delivered = rest.length > 0 && rest.every((u) => (t.receipts.get(u)?.delivered ?? 0) >= seq);
  if (rest.length > 0 && readBy.length === rest.length) {
    return { status: "read", mark: "\u2713\u2713", label: t.kind === "direct" ? "Read" : `Read by ${readBy.join(", ")}` };
  }
  if (readBy.length > 0) return { status: "delivered", mark: "\u2713\u2713", label: `Delivered; read by ${readBy.join(", ")}` };
  if (delivered) return { status: "delivered", mark: "\u2713\u2713", label: "Delivered" };
  return { status: "sent", mark: "\u2713", label: "Sent" };
}

// ----- rendering -------------------------------------------------------------------------

function renderConn(s: ConnectionState): void {
  const el = $("conn");
  const text: Record<ConnectionState["kind"], string> = {
    idle: "Not connected",
    connecting: "Connecting\u2026",
    connected: "Online",
    disconnected: "Offline \u2014 reconnecting",
    reconnecting: "Reconnecting\u2026",
    closed: "Disconnected",
  };
  let t = text[s.kind];
  if (s.kind === "reconnecting") t = `Offline \u2014 retrying in ${Math.max(1, Math.round(s.delayMs / 1000))} s`;
  if (s.kind === "closed" && s.error) t = `Disconnected: ${s.error.message}`;
  el.textContent = t;
  el.dataset.state = s.kind;
  const online = s.kind === "connected";
  // Writing works offline too: sends wait in the outbox.
  ($("compose") as HTMLTextAreaElement).disabled = !open;
  ($("composer").querySelector("button") as HTMLButtonElement).disabled = !open;
  document.body.dataset.online = String(online);
}

function renderList(): void {
  const list = $("thread-list");
  const sorted = [...threads.values()].sort((a, b) => (b.last?.sentAt ?? 0) - (a.last?.sentAt ?? 0) || a.id.localeCompare(b.id));
  list.replaceChildren(
    ...sorted.map((t) => {
      const name = h("span", { class: "name" });
      if (t.kind === "direct") {
        const other = others(t)[0] ?? "";
        const online = presenceOf(other)?.status === "online";
        name.append(h("span", { class: `dot${online ? " online" : ""}`, "aria-hidden": "true" }));
        name.append(other);
        name.title = lastSeenText(other);
      } else {
        name.append(threadName(t));
      }
      const waiting = t.pending[t.pending.length - 1];
      const preview = waiting ? `You: ${waiting.text} \u{1F552}` : t.last ? `${t.last.senderId === me ? "You" : t.last.senderId}: ${t.last.text}` : " ";
      const last = h("span", { class: "last" }, preview);
      const li = h("li", { tabindex: "0", "data-thread": t.id, role: "button" }, name, last);
      if (t.unread > 0) {
        li.append(h("span", { class: "unread", "aria-label": `${t.unread} unread` }, String(t.unread)));
      }
      if (t.id === open) li.setAttribute("aria-current", "true");
      li.addEventListener("click", () => openThread(t.id));
      li.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          openThread(t.id);
        }
      });
      return li;
    }),
  );
  $("no-threads").hidden = threads.size > 0;
  document.title = unreadTotal() > 0 ? `(${unreadTotal()}) messenger` : "messenger";
}

function unreadTotal(): number {
  let n = 0;
  for (const t of threads.values()) n += t.unread;
  return n;
}

function renderHead(): void {
  const t = open ? threads.get(open) : undefined;
  if (!t) return;
  $("conv-title").textContent = threadName(t);
  const sub = $("conv-sub");
  if (t.kind === "direct") {
    sub.textContent = lastSeenText(others(t)[0] ?? "");
  } else {
    const online = others(t).filter((u) => presenceOf(u)?.status === "online").length;
    sub.textContent = client?.state.kind === "connected" ? `${t.members.length} members, ${online} online` : `${t.members.length} members`;
  }
  const now = Date.now();
  const typing = [...t.typing].filter(([, until]) => until > now).map(([u]) => u);
  $("typing").textContent =
    typing.length === 0 ? "" : typing.length === 1 ? `${typing[0]} is typing\u2026` : `${typing.join(", ")} are typing\u2026`;
}

function messageItem(t: ThreadView, m: Message, newestMine: number): HTMLLIElement {
  const mine = m.senderId === me;
  const meta = h("span", { class: "meta" }, h("time", { datetime: new Date(m.sentAt).toISOString() }, time(m.sentAt)));
  const li = h("li", { class: `msg${mine ? " mine" : ""}`, "data-seq": String(m.seq) });
  if (!mine && t.kind === "group") li.append(h("span", { class: "who" }, m.senderId));
  li.append(h("span", { class: "text" }, m.text), meta);
  if (mine) {
    const s = status(t, m.seq);
    li.dataset.status = s.status;
    meta.append(h("span", { class: "mark", title: s.label, "aria-label": s.label }, s.mark));
    // Groups: who read it, spelled out under my newest message.
    const readBy = others(t).filter((u) => (t.receipts.get(u)?.read ?? 0) >= m.seq);
    if (t.kind === "group" && m.seq === newestMine && readBy.length > 0) {
      li.append(h("span", { class: "readby" }, `Read by ${readBy.join(", ")}`));
    }
  }
  return li;
}

function pendingItem(p: LocalSend): HTMLLIElement {
  const meta = h("span", { class: "meta" });
  const li = h("li", { class: "msg mine", "data-temp": p.tempId, "data-status": p.status }, h("span", { class: "text" }, p.text), meta);
  if (p.status === "sending") {
    meta.append(h("span", { class: "mark", title: "Sending", "aria-label": "Sending" }, "\u{1F552}"));
  } else {
    meta.append(h("span", { class: "mark", title: p.error ?? "Failed" }, `Not sent: ${p.error ?? "failed"}`));
    const retry = h("button", { type: "button", class: "retry" }, "Retry");
    retry.addEventListener("click", () => {
      p.status = "sending";
      if (open) dispatch(open, p);
      renderMessages(false);
    });
    meta.append(retry);
  }
  return li;
}

function renderMessages(stickToBottom: boolean): void {
  const t = open ? threads.get(open) : undefined;
  const ol = $("messages");
  const scroller = $("scroller");
  if (!t) {
    ol.replaceChildren();
    return;
  }
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 60;
  const sorted = [...t.messages.values()].sort((a, b) => a.seq - b.seq);
  const newestMine = sorted.reduce((n, m) => (m.senderId === me ? m.seq : n), 0);
  const items = sorted.map((m) => messageItem(t, m, newestMine));
  ol.replaceChildren(...items, ...t.pending.map(pendingItem));
  $("history-state").textContent = t.pager?.hasMore === false ? "Start of the conversation" : t.loadingOlder ? "Loading\u2026" : "";
  if (stickToBottom || atBottom) scroller.scrollTop = scroller.scrollHeight;
}

function render(): void {
  renderList();
  renderHead();
  renderMessages(false);
}

// ----- actions -----------------------------------------------------------------------------

function showError(id: string, e: unknown): void {
  $(id).textContent = e instanceof MessengerError ? e.message : String(e);
}

async function subscribeMembers(): Promise<void> {
  if (!client || client.state.kind !== "connected") return;
  const users = new Set<string>();
  for (const t of threads.values()) for (const u of others(t)) if (!subscribed.has(u)) users.add(u);
  if (users.size === 0) return;
  const list = [...users];
  try {
    await client.subscribePresence(list);
    for (const u of list) subscribed.add(u);
  } catch (e) {
    console.warn("presence subscription failed", e);
  }
}

function mergeThread(t: Thread | ThreadSummary): ThreadView {
  const v = view(t.threadId);
  v.kind = t.kind;
  v.title = t.title;
  v.members = t.members;
  if ("lastSeq" in t) {
    v.lastSeq = Math.max(v.lastSeq, t.lastSeq);
    v.listedSeq = t.lastSeq;
    v.unread = t.threadId === open && document.visibilityState === "visible" ? v.unread : t.unread;
    for (const [u, w] of Object.entries(t.receipts)) {
      const mine = watermark(v, u);
      mine.delivered = Math.max(mine.delivered, w.deliveredSeq);
      mine.read = Math.max(mine.read, w.readSeq);
    }
  }
  return v;
}

async function refreshThreads(): Promise<void> {
  if (!client) return;
  try {
    const list = await client.listThreads();
    for (const t of list) {
      const v = mergeThread(t);
      if (!v.last && t.lastSeq > 0) void loadLatest(v);
    }
    render();
    const current = open ? threads.get(open) : undefined;
    if (current && !current.historyLoaded && client) {
      current.pager = client.historyPager(current.id, 50);
      void loadOlder(current, true);
    }
    await subscribeMembers();
    if (open) markRead(open);
  } catch (e) {
    console.warn("listing threads failed", e);
  }
}

/** The newest message of a thread, for the list's preview. */
async function loadLatest(v: ThreadView): Promise<void> {
  if (!client) return;
  try {
    const page = await client.fetchHistory(v.id, { limit: 1 });
    for (const m of page.messages) addMessage(v, m, false);
    renderList();
  } catch {
    // the preview can wait for the next message
  }
}

function addMessage(v: ThreadView, m: Message, live: boolean): void {
  if (v.messages.has(m.seq)) return;
  v.messages.set(m.seq, m);
  if (!v.last || m.seq > v.last.seq) v.last = m;
  v.lastSeq = Math.max(v.lastSeq, m.seq);
  if (live && m.senderId !== me) {
    v.typing.delete(m.senderId);
    const w = watermark(v, me);
    // Messages up to `listedSeq` (catch-up after a reconnect) are in the server's count.
    if (m.seq > w.read && m.seq > v.listedSeq && !(v.id === open && document.visibilityState === "visible")) {
      v.unread += 1;
    }
  }
}

let readTimer: ReturnType<typeof setTimeout> | undefined;

/** Marks the open thread read up to its newest message from others. */
function markRead(id: string): void {
  const v = threads.get(id);
  if (!v || !client || document.visibilityState !== "visible") return;
  v.unread = 0;
  const newest = [...v.messages.values()].filter((m) => m.senderId !== me).sort((a, b) => b.seq - a.seq)[0];
  if (!newest || newest.seq <= watermark(v, me).read) return;
  clearTimeout(readTimer);
  readTimer = setTimeout(() => {
    client
      ?.markRead(id, newest.messageId)
      .then(() => {
        const w = watermark(v, me);
        w.read = Math.max(w.read, newest.seq);
      })
      .catch((e) => console.warn("mark read failed", e));
  }, 100);
}

async function openThread(id: string): Promise<void> {
  open = id;
  sessionStorage.setItem("messenger.open", id);
  document.body.dataset.view = "thread";
  const v = view(id);
  v.unread = 0;
  render();
  renderMessages(true);
  renderConn(client?.state ?? { kind: "idle" });
  if (!v.pager) {
    v.pager = client?.historyPager(id, 50);
    await loadOlder(v, true);
  }
  markRead(id);
  $("compose").focus();
}

async function loadOlder(v: ThreadView, first: boolean): Promise<void> {
  if (!v.pager || v.loadingOlder || !v.pager.hasMore) return;
  v.loadingOlder = true;
  const scroller = $("scroller");
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  try {
    const page = await v.pager.older();
    v.historyLoaded = true;
    for (const m of page) addMessage(v, m, false);
  } catch (e) {
    // Offline: the next scroll (or reopening) tries again.
    v.pager = client?.historyPager(v.id, 50);
    console.warn("loading history failed", e);
  } finally {
    v.loadingOlder = false;
  }
  if (v.id !== open) return;
  renderMessages(first);
  renderList();
  if (!first) scroller.scrollTop = scroller.scrollHeight - fromBottom;
}

function dispatch(threadId: string, p: LocalSend): void {
  const v = view(threadId);
  client
    ?.send(threadId, p.text, { tempId: p.tempId })
    .then(() => {
      v.pending = v.pending.filter((x) => x !== p);
      if (open === threadId) renderMessages(true);
    })
    .catch((e: unknown) => {
      p.status = "failed";
      p.error = e instanceof MessengerError ? (e.code ?? e.kind) : String(e);
      if (open === threadId) renderMessages(false);
    });
}

function sendTyping(on: boolean): void {
  if (!client || !open || client.state.kind !== "connected") return;
  client.typing(open, on).catch(() => {});
}

// ----- wiring ------------------------------------------------------------------------------

function wsUrl(): string {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}/ws`;
}

/**
 * The user a token names, to pick that user's local store: the name itself under dev
 * auth, a JWT's `sub` (read, not verified: the server checks the token, and the SDK
 * stops with `wrong_user` if the store belongs to someone else).
 */
function userOf(token: string): string | undefined {
  const parts = token.split(".");
  if (parts.length !== 3) return token;
  try {
    const json = atob((parts[1] as string).replace(/-/g, "+").replace(/_/g, "/"));
    const sub = (JSON.parse(json) as { sub?: unknown }).sub;
    return typeof sub === "string" ? sub : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The user's store: an IndexedDB database per user, so what they wrote offline survives
 * a closed tab. Without IndexedDB (some private modes) the outbox lives in memory.
 */
async function openStore(token: string): Promise<ClientStore> {
  const user = userOf(token);
  if (user !== undefined) {
    try {
      store = await IndexedDbStore.open(`messenger:${user}`);
      return store;
    } catch (e) {
      console.warn("IndexedDB unavailable: unsent messages will not survive closing the tab", e);
    }
  }
  return new MemoryStore();
}

async function start(token: string, label: string): Promise<void> {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  const s = await openStore(token);
  const c = new MessengerClient({ url: wsUrl(), token, store: s });
  client = c;
  c.on("state", (s) => {
    if (client !== c) return;
    renderConn(s);
    renderList();
    renderHead();
    if (s.kind === "connected") {
      me = s.userId;
      $("me").textContent = `Signed in as ${me}`;
      subscribed.clear();
      void refreshThreads();
    }
    if (s.kind === "closed" && s.error?.kind === "auth") {
      signOut();
      $("signin-error").textContent = `The server refused ${label}: ${s.error.message}`;
    }
  });
  c.on("message", (m) => {
    const known = threads.has(m.threadId);
    const v = view(m.threadId);
    addMessage(v, m, true);
    if (!known) void refreshThreads();
    if (m.threadId === open) markRead(m.threadId);
    render();
  });
  c.on("receipt", (r) => {
    const v = view(r.threadId);
    const w = watermark(v, r.userId);
    w.delivered = Math.max(w.delivered, r.seq);
    if (r.status === "READ") {
      w.read = Math.max(w.read, r.seq);
      // Read in another tab or device of mine: nothing unread up to there.
      if (r.userId === me) v.unread = [...v.messages.values()].filter((m) => m.seq > r.seq && m.senderId !== me).length;
    }
    render();
  });
  c.on("presence", (p) => {
    presence.set(p.userId, { status: p.status, lastSeen: p.lastSeen });
    renderList();
    renderHead();
  });
  c.on("typing", (t) => {
    const v = view(t.threadId);
    if (t.typing) v.typing.set(t.userId, Date.now() + 6000);
    else v.typing.delete(t.userId);
    renderHead();
    setTimeout(renderHead, 6100);
  });
  c.on("thread", (t) => {
    mergeThread(t);
    render();
    void subscribeMembers();
  });
  c.on("sent", (sent) => {
    // Stored: the message itself follows as a `message` event; drop the 🕓 copy now.
    const v = threads.get(sent.threadId);
    if (v) v.pending = v.pending.filter((p) => p.tempId !== sent.tempId);
  });
  try {
    // What a previous run left unsent (tab closed offline): shown at once, and sent
    // once connected under the same temp ids.
    await c.load();
    const user = c.userId;
    if (user !== undefined) {
      me = user;
      $("me").textContent = `Signed in as ${me}`;
    }
    for (const p of c.pending()) {
      const local: LocalSend = { tempId: p.tempId, text: p.text, status: "sending" };
      view(p.threadId).pending.push(local);
      dispatch(p.threadId, local);
    }
  } catch (e) {
    console.warn("the local store could not be read", e);
  }
  if (client !== c) return;
  const wasOpen = sessionStorage.getItem("messenger.open");
  render();
  if (wasOpen) void openThread(wasOpen);
  c.connect().catch((e: unknown) => {
    if (client !== c) return;
    if (!(e instanceof MessengerError && e.kind === "auth")) showError("signin-error", e);
  });
}

function signOut(): void {
  const c = client;
  const s = store;
  client = undefined;
  store = undefined;
  // Unsent messages stay in this browser's store of the user: they go out at the next
  // sign-in as the same user.
  void c?.close().then(() => s?.close());
  sessionStorage.removeItem("messenger.token");
  sessionStorage.removeItem("messenger.label");
  sessionStorage.removeItem("messenger.open");
  threads.clear();
  presence.clear();
  subscribed.clear();
  open = undefined;
  me = "";
  $("me").textContent = "";
  $("signin").hidden = false;
  $("app").hidden = true;
  $("signout").hidden = true;
  renderConn({ kind: "idle" });
  render();
}

function init(): void {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = ($("signin-name") as HTMLInputElement).value.trim();
    const jwt = ($("signin-token") as HTMLTextAreaElement).value.trim();
    if (!name && !jwt) {
      $("signin-error").textContent = "Type your name (dev auth) or paste a token.";
      return;
    }
    $("signin-error").textContent = "";
    const token = jwt || name;
    const label = jwt ? "the token" : `the name ${name}`;
    sessionStorage.setItem("messenger.token", token);
    sessionStorage.setItem("messenger.label", label);
    void start(token, label);
  });
  $("signout").addEventListener("click", signOut);
  $("new-direct").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("direct-user") as HTMLInputElement;
    const user = input.value.trim();
    $("new-error").textContent = "";
    client
      ?.createDirect(user)
      .then((t) => {
        input.value = "";
        mergeThread(t);
        void subscribeMembers();
        return openThread(t.threadId);
      })
      .catch((err) => showError("new-error", err));
  });
  $("new-group").addEventListener("submit", (e) => {
    e.preventDefault();
    const title = ($("group-title") as HTMLInputElement).value.trim();
    const members = ($("group-members") as HTMLInputElement).value
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
    $("new-error").textContent = "";
    client
      ?.createGroup(members, title || undefined)
      .then((t) => {
        ($("group-title") as HTMLInputElement).value = "";
        ($("group-members") as HTMLInputElement).value = "";
        mergeThread(t);
        void subscribeMembers();
        return openThread(t.threadId);
      })
      .catch((err) => showError("new-error", err));
  });
  $("back").addEventListener("click", () => {
    document.body.dataset.view = "list";
    open = undefined;
    sessionStorage.removeItem("messenger.open");
    render();
  });
  const compose = $("compose") as HTMLTextAreaElement;
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = compose.value.trim();
    if (!text || !open) return;
    compose.value = "";
    const p: LocalSend = { tempId: newTempId(), text, status: "sending" };
    view(open).pending.push(p);
    renderMessages(true);
    renderList();
    dispatch(open, p);
    clearTimeout(typingStop);
    if (typingSentAt) sendTyping(false);
    typingSentAt = 0;
  });
  compose.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $<HTMLFormElement>("composer").requestSubmit();
    }
  });
  compose.addEventListener("input", () => {
    const now = Date.now();
    if (now - typingSentAt > 3000) {
      typingSentAt = now;
      sendTyping(true);
    }
    clearTimeout(typingStop);
    typingStop = setTimeout(() => {
      typingSentAt = 0;
      sendTyping(false);
    }, 4000);
  });
  $("scroller").addEventListener("scroll", () => {
    const v = open ? threads.get(open) : undefined;
    if (v && $("scroller").scrollTop < 40) void loadOlder(v, false);
  });
  document.addEventListener("visibilitychange", () => {
    if (open) markRead(open);
  });
  const saved = sessionStorage.getItem("messenger.token");
  if (saved) void start(saved, sessionStorage.getItem("messenger.label") ?? "the token");
  renderConn({ kind: "idle" });
}

init();
