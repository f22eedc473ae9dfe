// The chat page: conversations, the composer, the outbox and message states.
//
// A user message moves through data-state
//   queued (no connection) → sending → accepted → routed → delivered → answered
// or ends in error / cancelled. Replies hang under the message they answer; streamed chunks
// render as they arrive and the final REPLY replaces them. Conversations, messages and the
// outbox are kept in sessionStorage so a reload of the tab loses nothing.
import { Connection } from './connection.js';
import { AgentsPanel } from './agents.js';
import { h, hexId, clock, errorWords, hue } from './util.js';
import { callsOf, paintInnerCalls } from './calls.js';
import { missingConversations, userId } from './history.js';

const params = new URLSearchParams(location.search);
const TOKEN = params.get('token');
// How long a message may wait for the connection before it is marked failed (?outbox_wait=s).
const OUTBOX_WAIT_MS = (Number(params.get('outbox_wait')) || 120) * 1000;
const MAX_FRAME_BYTES = 65536;
const STORE_KEY = 'agentcomm.chat';
const KEEP_ITEMS = 300;
const RANK = { queued: 0, sending: 1, accepted: 2, routed: 3, delivered: 4 };
const IN_FLIGHT = new Set(['accepted', 'routed', 'delivered']);
const FINAL = new Set(['answered', 'cancelled', 'error']);

const $ = (id) => document.getElementById(id);
const ui = {
  log: $('log'), tabs: $('conversation-tabs'), input: $('composer-input'), select: $('receiver-select'),
  pill: $('connection-state'), outbox: $('outbox-count'), hint: $('composer-hint'), announcer: $('announcer'),
};

// ---- state -------------------------------------------------------------------------------
// items: user messages ({kind:'user'}), stand-alone agent messages ({kind:'incoming'}) and
// notices ({kind:'notice'}), by id; conversations list their item ids in order.
let convs = [];
let current = null;
const items = new Map();
const replyIndex = new Map(); // reply message_id → {reply, item}
const cancels = new Map();    // CANCEL message_id → id of the TEXT it stops
const views = new Map();      // item id → {el, refs}

const api = {
  async command(agentId, body) {
    const headers = { 'Content-Type': 'application/json' };
    if (TOKEN) headers.Authorization = `Bearer ${TOKEN}`;
    const res = await fetch(`/api/agents/${encodeURIComponent(agentId)}/commands`, { method: 'POST', headers, body: JSON.stringify(body) });
    let data = null;
    try { data = await res.json(); } catch { /* not JSON */ }
    if (res.ok) return data || {};
    const detail = data && (typeof data.detail === 'string' ? data.detail : data.error_message || data.text_payload);
    const words = { 401: 'Not authorised', 403: 'Not authorised', 404: 'Unknown agent', 409: 'The agent is offline', 504: 'The agent did not answer in time' }[res.status];
    throw new Error(detail || words || `HTTP ${res.status}`);
  },
};

const USER = TOKEN ? null : userId();
const conn = new Connection({ token: TOKEN, userId: USER });
const agents = new AgentsPanel({
  list: $('agent-list'), count: $('agent-count'), empty: $('empty-agents'), api,
  onPick: (id) => { conv().receiver = id; renderReceivers(); closeSidebar(); ui.input.focus(); save(); },
  onChange: () => { renderReceivers(); for (const it of items.values()) if (it.kind === 'user') paintStatus(it); },
});

function conv(id = current) { return convs.find((c) => c.id === id); }

function newConversation() {
  const c = { id: `conv_${hexId()}`, title: '', receiver: '', items: [], unread: 0 };
  convs.push(c);
  return c;
}

// ---- persistence -------------------------------------------------------------------------
let saveTimer = null;
function save() { clearTimeout(saveTimer); saveTimer = setTimeout(saveNow, 250); } // streams save often
function saveNow() {
  clearTimeout(saveTimer);
  const all = [...items.values()].slice(-KEEP_ITEMS);
  try { sessionStorage.setItem(STORE_KEY, JSON.stringify({ convs, current, items: all })); } catch { /* full or private */ }
}

function restore() {
  let data = null;
  try { data = JSON.parse(sessionStorage.getItem(STORE_KEY)); } catch { /* ignore */ }
  if (!data?.convs?.length) { current = newConversation().id; return; }
  convs = data.convs;
  current = conv(data.current) ? data.current : convs[0].id;
  for (const it of data.items || []) {
    items.set(it.id, it);
    for (const r of it.replies || (it.reply ? [it.reply] : [])) replyIndex.set(r.id, { reply: r, item: it });
    if (it.state === 'sending') Object.assign(it, { state: 'queued', queuedAt: Date.now() }); // unconfirmed: resend, same id
  }
  for (const c of convs) c.items = c.items.filter((id) => items.has(id));
}

// ---- sending -----------------------------------------------------------------------------
function submit() {
  if (!ui.input.value.trim()) return;
  sendText(ui.input.value, ui.select.value);
  ui.input.value = '';
  autosize();
}

function sendText(text, receiver, convId = current) {
  const c = conv(convId);
  const now = Date.now();
  const item = { kind: 'user', id: hexId(), conv: c.id, text, receiver: receiver || '', state: 'queued', at: now, queuedAt: now, replies: [], notes: [] };
  if (!c.title) { c.title = text.trim().slice(0, 32); renderTabs(); }
  addItem(item);
  if (conn.ready) transmit(item);
  renderOutbox();
  if (c.id === current) scrollToEnd();
  save();
}

function transmit(item) {
  const frame = { message_type: 'TEXT', message_id: item.id, text_payload: item.text, conversation_id: item.conv };
  if (item.receiver) frame.receiver_id = item.receiver;
  if (new TextEncoder().encode(JSON.stringify(frame)).length > MAX_FRAME_BYTES) {
    return fail(item, 'too_large', 'The message is too large to send (limit 64 KB).');
  }
  if (conn.send(frame)) setState(item, 'sending');
}

/**
 * After (re)registering: send everything that waited, oldest first, with the same ids — and
 * again everything that has no final answer yet: its answer may have been on the connection
 * that broke. The hub recognises the id, publishes nothing twice and answers it once.
 */
function flushOutbox() {
  const unanswered = (it) => it.state === 'queued' || it.state === 'sending' || IN_FLIGHT.has(it.state);
  const waiting = [...items.values()].filter((it) => it.kind === 'user' && !it.foreign && unanswered(it));
  waiting.sort((a, b) => a.at - b.at).forEach(transmit);
  renderOutbox();
}

function cancel(item) {
  const id = hexId();
  cancels.set(id, item.id);
  if (conn.send({ message_type: 'CANCEL', message_id: id, in_reply_to_message_id: item.id })) {
    item.cancelRequested = true;
    paintStatus(item);
  }
}

function discard(item) { setState(item, 'cancelled'); item.discarded = true; paintStatus(item); renderOutbox(); }

/** "Send again" makes a new message: the hub has already seen (and refused) the old id. */
function retry(item) { sendText(item.text, item.receiver, item.conv); }

// ---- receiving ---------------------------------------------------------------------------
function onFrame(f) {
  switch (f.message_type) {
    case 'AGENT_STATUS_UPDATE': return agents.apply(f);
    case 'TEXT': return onText(f);
    case 'REPLY_CHUNK': return onReply(f, false);
    case 'REPLY': return onReply(f, true);
    case 'ERROR': return onError(f);
    case 'SYSTEM': return onSystem(f);
    default: return undefined; // unknown types are ignored, as the protocol asks
  }
}

function onText(f) {
  const item = items.get(f.message_id);
  if (item?.kind === 'user') {
    if (f.receiver_id && f.routing_status !== 'error') item.routedTo = f.receiver_id;
    // text_payload is our own text; the reason, when given, is in routing_status_message.
    if (f.routing_status === 'error') return fail(item, f.error_code, errorWords(f.error_code, f.routing_status_message));
    const next = { pending: 'accepted', routed: 'routed', delivered: 'delivered' }[f.routing_status];
    if (next) setState(item, next);
    return save();
  }
  if (f.sender_id && f.sender_id === conn.frontendId) return undefined; // our own, forgotten
  if (f.routing_status && f.sender_id?.startsWith('web_')) return onSiblingText(f);
  // A TEXT that is not ours: an agent writing to this frontend directly.
  return onReply({ ...f, in_reply_to_message_id: null }, true);
}

/** A TEXT another tab or device of this user sent (capabilities.user_frames): shown as ours. */
function onSiblingText(f) {
  const convId = f.conversation_id || 'default';
  if (!conv(convId)) {
    convs.push({ id: convId, title: (f.text_payload || '').trim().slice(0, 32), receiver: '', items: [], unread: 0 });
    renderTabs();
  }
  const at = Date.now();
  addItem({ kind: 'user', id: f.message_id, conv: convId, text: f.text_payload || '', receiver: f.receiver_id || '', state: 'sending', at, queuedAt: at, replies: [], notes: [], foreign: true });
  return onText(f);
}

function onReply(f, final) {
  const id = f.message_id || hexId();
  let entry = replyIndex.get(id);
  if (!entry) {
    const reply = { id, sender: f.sender_id || '', text: '', chunks: [], streaming: !final, at: Date.now() };
    const parent = items.get(f.in_reply_to_message_id);
    let item = parent;
    if (parent?.kind === 'user') parent.replies.push(reply);
    else { item = { kind: 'incoming', id: `in_${id}`, conv: conv(f.conversation_id) ? f.conversation_id : current, reply, at: Date.now() }; addItem(item); }
    entry = { reply, item };
    replyIndex.set(id, entry);
  }
  const { reply, item } = entry;
  if (final) {
    reply.text = f.text_payload ?? reply.chunks.join('');
    reply.calls = callsOf(f);
    reply.streaming = false;
    reply.chunks = [];
    if (item.kind === 'user') setState(item, item.cancelRequested ? 'cancelled' : 'answered');
    announce(`${agents.name(reply.sender)}: ${reply.text.slice(0, 200)}`);
  } else if (reply.streaming) {
    const seq = Number(f.seq) || 0;
    const inOrder = seq === reply.chunks.length;
    reply.chunks[seq] = f.text_delta || ''; // by seq, so a late chunk lands in place
    reply.text = inOrder ? reply.text + reply.chunks[seq] : reply.chunks.join('');
    if (inOrder && paintStreamed(item, reply)) return save();
  }
  dropStreamed(reply);
  withScroll(() => paintReply(item, reply));
  if (final && item.kind === 'user') markUnread(item.conv);
  save();
}

function onError(f) {
  const target = cancels.get(f.in_reply_to_message_id) || f.in_reply_to_message_id;
  const item = items.get(target);
  if (item?.kind !== 'user') return addNotice(errorWords(f.error_code, f.text_payload), 'error');
  if (f.error_code === 'cancelled') { if (item.state !== 'answered') setState(item, 'cancelled'); return save(); }
  if (target !== f.in_reply_to_message_id) { // our CANCEL was refused; the message goes on
    item.cancelRequested = false;
    item.notes.push(`Could not stop: ${errorWords(f.error_code, f.text_payload)}`);
    return paintStatus(item);
  }
  return fail(item, f.error_code, errorWords(f.error_code, f.text_payload));
}

function onSystem(f) {
  const item = items.get(f.in_reply_to_message_id);
  const who = f.sender_id ? `${agents.name(f.sender_id)}: ` : '';
  if (item?.kind === 'user') { item.notes.push(who + (f.text_payload || '')); paintStatus(item); return save(); }
  return addNotice(who + (f.text_payload || ''), 'info', f.conversation_id);
}

function fail(item, code, words) {
  if (item.state === 'answered' || item.state === 'cancelled') return;
  item.error = words;
  item.errorCode = code || '';
  setState(item, 'error');
  announce(`Message failed: ${words}`);
  save();
}

function setState(item, state) {
  // Never step back: a late "routed" echo must not undo "delivered" or "answered".
  if (state in RANK && state !== 'queued' && (FINAL.has(item.state) || RANK[state] < RANK[item.state])) return;
  if (state === 'queued') item.queuedAt = Date.now();
  item.state = state;
  if (FINAL.has(state)) { // a stopped or failed reply stops streaming where it is
    for (const r of item.replies) if (r.streaming) { r.streaming = false; paintReply(item, r); }
  }
  paintStatus(item);
  renderOutbox();
}

function addNotice(text, level, convId) {
  addItem({ kind: 'notice', id: `note_${hexId()}`, conv: conv(convId) ? convId : current, text, level, at: Date.now() });
  save();
}

function addItem(item) {
  items.set(item.id, item);
  conv(item.conv).items.push(item.id);
  if (item.conv === current) withScroll(() => { ui.log.querySelector('.empty-state')?.remove(); ui.log.append(view(item).el); });
  else markUnread(item.conv);
}

/** The user's conversations the hub keeps that this tab does not have (docs/history.md). */
async function importHistory() {
  const found = await missingConversations({ token: TOKEN, user: USER, known: (id) => Boolean(conv(id)) });
  if (!found.length) return;
  for (const c of found) {
    if (conv(c.id)) continue; // made meanwhile
    const first = c.items.find((it) => it.kind === 'user');
    convs.push({ id: c.id, title: first ? first.text.trim().slice(0, 32) : '', receiver: '', items: c.items.map((it) => it.id), unread: 0 });
    for (const it of c.items) {
      items.set(it.id, it);
      for (const r of it.replies) replyIndex.set(r.id, { reply: r, item: it });
    }
  }
  renderTabs();
  renderLog();
  save();
}

// ---- rendering ---------------------------------------------------------------------------
function statusWords(it) {
  const who = agents.name(it.routedTo || it.receiver);
  const streaming = it.replies.some((r) => r.streaming);
  if (it.cancelRequested && IN_FLIGHT.has(it.state)) return 'Stopping…';
  switch (it.state) {
    case 'queued': return 'Waiting for connection — will send when back online';
    case 'sending': return 'Sending…';
    case 'accepted': return 'Accepted';
    case 'routed': return `Routed to ${who}`;
    case 'delivered': return streaming ? `${who} is replying…` : `Delivered to ${who}`;
    case 'answered': return `Answered by ${agents.name(it.replies.at(-1)?.sender || it.routedTo)}`;
    case 'cancelled': return it.discarded ? 'Discarded — not sent' : 'Stopped';
    case 'error': return `Failed: ${it.error}`;
    default: return it.state;
  }
}

/** The element of an item, built once and then updated in place. */
function view(item) {
  let v = views.get(item.id);
  if (v) return v;
  if (item.kind === 'notice') {
    v = { el: h('p', { class: `notice ${item.level}`, 'data-testid': 'system-notice' }, item.text) };
  } else if (item.kind === 'incoming') {
    v = { el: h('article', { class: 'msg incoming', 'data-testid': 'incoming' }), refs: { replies: null } };
    v.refs.replies = v.el;
  } else {
    const refs = {
      status: h('span', { class: 'status', 'data-testid': 'message-status' }),
      time: h('time', { dateTime: new Date(item.at).toISOString(), text: clock(item.at) }),
      replies: h('div', { class: 'replies' }),
      notes: h('div', { class: 'notes' }),
      stop: h('button', { type: 'button', class: 'btn small danger', 'data-testid': 'stop-button', onclick: () => cancel(item) }, '■ Stop'),
      retry: h('button', { type: 'button', class: 'btn small', 'data-testid': 'retry-button', onclick: () => retry(item) }, 'Send again'),
      discard: h('button', { type: 'button', class: 'btn small', 'data-testid': 'discard-button', onclick: () => discard(item) }, 'Discard'),
    };
    const to = h('span', { class: 'to' });
    refs.to = to;
    v = {
      refs,
      el: h('article', { class: 'msg user', 'data-testid': 'message', 'data-message-id': item.id },
        h('div', { class: 'bubble' }, item.text),
        h('div', { class: 'meta' }, to, refs.time, h('span', { 'aria-hidden': 'true' }, '·'), refs.status, refs.retry, refs.discard),
        refs.notes, refs.replies, h('div', { class: 'foot' }, refs.stop)),
    };
  }
  views.set(item.id, v);
  if (item.kind === 'user') { paintStatus(item); item.replies.forEach((r) => paintReply(item, r)); }
  if (item.kind === 'incoming') paintReply(item, item.reply);
  return v;
}

function paintStatus(item) {
  const v = views.get(item.id);
  if (!v) return;
  const { el, refs } = v;
  el.dataset.state = item.state;
  refs.status.textContent = statusWords(item);
  refs.to.textContent = `to ${item.receiver ? agents.name(item.receiver) : 'any agent'}`;
  const live = IN_FLIGHT.has(item.state) || item.replies.some((r) => r.streaming);
  refs.stop.hidden = !live || item.state === 'answered' || item.state === 'cancelled' || item.state === 'error';
  refs.stop.disabled = Boolean(item.cancelRequested) || !conn.ready;
  refs.stop.title = conn.ready ? 'Stop this reply' : 'Reconnect to stop';
  refs.retry.hidden = item.state !== 'error';
  refs.discard.hidden = item.state !== 'queued';
  if (refs.notes.childElementCount !== item.notes.length) {
    refs.notes.replaceChildren(...item.notes.map((n) => h('p', { class: 'notice info', 'data-testid': 'system-notice' }, n)));
  }
}

function paintReply(item, reply) {
  const v = views.get(item.id);
  if (!v) return;
  let el = v.el.querySelector(`[data-reply-id="${CSS.escape(reply.id)}"]`);
  if (!el) {
    const name = agents.name(reply.sender) || 'agent';
    el = h('div', { class: 'reply', 'data-testid': 'reply', 'data-reply-id': reply.id, 'data-reply-to': item.kind === 'user' ? item.id : '' },
      h('span', { class: 'avatar', 'aria-hidden': 'true', style: `--h:${hue(name)}` }, name.slice(0, 1).toUpperCase()),
      h('div', { class: 'reply-body' }, h('div', { class: 'sender' }, name), h('div', { class: 'bubble' })));
    v.refs.replies.append(el);
  }
  el.dataset.streaming = String(reply.streaming);
  el.querySelector('.bubble').textContent = reply.text;
  paintInnerCalls(el, reply.calls);
  if (item.kind === 'user') paintStatus(item);
}

// ---- streamed replies: new text appended once per frame ---------------------------------
// A long answer arrives as thousands of chunks; painting each one (the whole text set again,
// the log measured twice for scrolling) lays the page out per token. Chunks that arrive in
// order only add text: it is appended to the bubble's text node once per animation frame,
// with one scroll check for every reply painted in that frame.
const streamed = new Map(); // reply id -> { item, reply }
let streamFrame = 0;

/** Queues `reply`'s new text for the next frame; false when it must be painted whole now. */
function paintStreamed(item, reply) {
  const bubble = replyBubble(item, reply);
  if (!bubble || bubble.childNodes.length !== 1 || bubble.firstChild.nodeType !== Node.TEXT_NODE) return false;
  streamed.set(reply.id, { item, reply });
  if (!streamFrame) streamFrame = requestAnimationFrame(flushStreamed);
  return true;
}

function flushStreamed() {
  streamFrame = 0;
  const due = [...streamed.values()];
  streamed.clear();
  withScroll(() => {
    for (const { item, reply } of due) {
      const text = replyBubble(item, reply)?.firstChild;
      const shown = text?.length ?? 0; // what is shown must still be how the reply begins
      if (!text || reply.text.slice(Math.max(0, shown - 16), shown) !== text.data.slice(-16)) { paintReply(item, reply); continue; }
      if (reply.text.length > text.length) text.appendData(reply.text.slice(text.length));
    }
  });
}

function dropStreamed(reply) { streamed.delete(reply.id); }

function replyBubble(item, reply) {
  return views.get(item.id)?.el.querySelector(`[data-reply-id="${CSS.escape(reply.id)}"] .bubble`) || null;
}

function renderLog() {
  ui.log.setAttribute('aria-busy', 'true');
  const c = conv();
  const els = c.items.map((id) => view(items.get(id)).el);
  ui.log.replaceChildren(...(els.length ? els : [emptyState()]));
  ui.log.removeAttribute('aria-busy');
  c.unread = 0;
  renderReceivers();
  renderTabs();
  scrollToEnd();
}

function emptyState() {
  return h('div', { class: 'empty-state', 'data-testid': 'empty-state' },
    h('h2', {}, 'Start a conversation'),
    h('p', {}, 'Write below. “Any agent” lets the hub choose; pick a name to talk to one agent.'),
    h('p', { class: 'muted' }, 'With the demo running, try the echo agent, or typist to see a streamed reply.'));
}

function renderTabs() {
  const focused = document.activeElement?.dataset?.conversationId;
  ui.tabs.replaceChildren(...convs.map((c, i) => {
    const selected = c.id === current;
    return h('button', { type: 'button', class: 'tab', 'data-testid': 'conversation-tab', 'data-conversation-id': c.id,
      'aria-current': selected ? 'true' : null, 'data-unread': c.unread ? 'true' : null, title: c.title || `Conversation ${i + 1}`,
      onclick: () => { current = c.id; renderLog(); save(); } }, c.title || `Conversation ${i + 1}`,
    c.unread ? h('span', { class: 'badge', 'aria-label': `${c.unread} new` }, String(c.unread)) : null);
  }));
  if (focused) ui.tabs.querySelector(`[data-conversation-id="${CSS.escape(focused)}"]`)?.focus();
}

function markUnread(convId) {
  if (convId === current) return;
  const c = conv(convId);
  if (c) { c.unread += 1; renderTabs(); }
}

/** "Any agent" plus the reachable agents; keeps a chosen agent even if it just went offline. */
function renderReceivers() {
  const chosen = conv().receiver || '';
  const list = agents.reachable().map((a) => [a.agent_id, `${a.agent_name}${a.status === 'online' ? '' : ` (${a.status})`}`]);
  if (chosen && !list.some(([id]) => id === chosen)) list.push([chosen, `${agents.name(chosen)} (offline)`]);
  const sig = JSON.stringify(list);
  if (ui.select.dataset.sig !== sig) { // rebuilding would close an open dropdown, so only on change
    ui.select.dataset.sig = sig;
    ui.select.replaceChildren(h('option', { value: '' }, 'Any agent'), ...list.map(([id, label]) => h('option', { value: id }, label)));
  }
  ui.select.value = chosen;
}

function renderOutbox() {
  const n = [...items.values()].filter((it) => it.state === 'queued').length;
  ui.outbox.dataset.count = String(n);
  ui.outbox.textContent = String(n);
  ui.outbox.title = `${n} message${n === 1 ? '' : 's'} waiting for the connection`;
  ui.outbox.setAttribute('aria-label', ui.outbox.title);
  ui.outbox.hidden = n === 0;
}

function renderConnection() {
  const { state, retryAt, reason } = conn;
  ui.pill.dataset.state = state;
  const secs = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
  ui.pill.textContent = { connecting: 'Connecting…', online: 'Online', reconnecting: `Reconnecting in ${secs} s`, offline: 'Offline — reconnect' }[state];
  ui.pill.title = reason || (state === 'online' ? 'Connected to the hub' : 'Click to reconnect now');
  ui.hint.textContent = state === 'online' ? 'Enter to send · Shift+Enter for a new line'
    : state === 'offline' ? `Not connected: ${reason.replace(/\.$/, '')}. New messages wait in the outbox.`
      : 'Not connected — messages are kept and sent when the connection is back.';
  $('stale-note').hidden = state === 'online';
  $('agent-list').classList.toggle('stale', state !== 'online');
}

// ---- small behaviours --------------------------------------------------------------------
function announce(text) { ui.announcer.textContent = text; }

function withScroll(fn) {
  const log = ui.log;
  const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
  fn();
  if (atEnd) log.scrollTop = log.scrollHeight;
}
function scrollToEnd() { ui.log.scrollTop = ui.log.scrollHeight; }

function autosize() {
  ui.input.style.height = 'auto';
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 200)}px`;
}

function openSidebar() { document.body.classList.add('sidebar-open'); $('backdrop').hidden = false; $('agents-toggle').setAttribute('aria-expanded', 'true'); $('sidebar-close').focus(); }
function closeSidebar() { document.body.classList.remove('sidebar-open'); $('backdrop').hidden = true; $('agents-toggle').setAttribute('aria-expanded', 'false'); }

/** Once a second: the reconnect countdown, outbox expiry and "last seen" words. */
function tick() {
  if (conn.state === 'reconnecting') renderConnection();
  const now = Date.now();
  for (const it of items.values()) {
    if (it.state === 'queued' && now - it.queuedAt > OUTBOX_WAIT_MS) {
      fail(it, 'not_sent', `Not sent — no connection for ${Math.round(OUTBOX_WAIT_MS / 1000)} s.`);
    }
  }
  agents.tick();
}

// ---- wiring ------------------------------------------------------------------------------
$('composer').addEventListener('submit', (ev) => { ev.preventDefault(); submit(); });
ui.input.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); submit(); }
});
ui.input.addEventListener('input', autosize);
ui.select.addEventListener('change', () => { conv().receiver = ui.select.value; save(); });
$('new-conversation').addEventListener('click', () => {
  // An untouched conversation is reused rather than piling up empty tabs.
  const empty = convs.find((c) => c.items.length === 0);
  current = (empty || newConversation()).id;
  renderLog();
  save();
  ui.input.focus();
});
ui.pill.addEventListener('click', () => conn.reconnectNow());
$('agents-toggle').addEventListener('click', openSidebar);
$('sidebar-close').addEventListener('click', closeSidebar);
$('backdrop').addEventListener('click', closeSidebar);
document.addEventListener('keydown', (ev) => { if (ev.key === 'Escape' && document.body.classList.contains('sidebar-open')) closeSidebar(); });

conn.addEventListener('state', () => {
  if (conn.state !== 'online') {
    // Sent but never confirmed: back to the outbox; re-sent with the same id, so the hub can
    // recognise a duplicate.
    for (const it of items.values()) if (it.state === 'sending') setState(it, 'queued');
  }
  renderConnection();
  renderOutbox();
  for (const it of items.values()) if (it.kind === 'user' && IN_FLIGHT.has(it.state)) paintStatus(it);
});
conn.addEventListener('registered', flushOutbox);
conn.addEventListener('registered', () => { importHistory().catch(() => { /* the tab's own copy stands */ }); });
addEventListener('pagehide', saveNow);
conn.addEventListener('frame', (ev) => onFrame(ev.detail));

restore();
renderLog();
renderReceivers();
renderConnection();
renderOutbox();
setInterval(tick, 1000);
conn.start();
ui.input.focus();
