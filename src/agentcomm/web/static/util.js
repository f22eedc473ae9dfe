// Small helpers shared by the page. Nothing here touches innerHTML: every piece of text that came
// from the network ends up in a text node, so a reply containing markup shows as text.

/** Build an element: h('button', {class: 'btn', onclick: fn, 'data-testid': 'x'}, 'Label'). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) if (child != null && child !== false) el.append(child);
  return el;
}

/** Random hex id; getRandomValues also works on plain http, unlike crypto.randomUUID. */
export function hexId() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
}

export function ago(iso, now = Date.now()) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return 'never';
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

export function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

const ERROR_WORDS = {
  no_agent_available: 'No agent is available to take this message.',
  agent_offline: 'That agent is offline.',
  unknown_receiver: 'There is no agent with that id.',
  bus_unavailable: 'The message bus is unavailable — try again shortly.',
  cancelled: 'Stopped.',
  rate_limited: 'Too many messages — wait a moment and try again.',
  too_large: 'The message is too large.',
  unauthorized: 'Not authorised to send this.',
  hop_limit: 'The message was passed around too often and was dropped.',
  invalid_message: 'The hub rejected the message as invalid.',
  invalid_json: 'The hub could not read the message.',
  not_registered: 'The connection was not registered yet.',
  internal: 'The hub hit an internal error.',
  answer_timeout: 'No answer came in time.',
};

/** Words for an error code; `detail` (the server's own sentence) wins when it has one. */
export function errorWords(code, detail) {
  return detail || ERROR_WORDS[code] || (code ? `Failed (${code}).` : 'Failed.');
}

/** A stable hue per agent name, for avatars. */
export function hue(name) {
  let n = 0;
  for (const c of String(name)) n = (n * 31 + c.charCodeAt(0)) % 360;
  return n;
}
