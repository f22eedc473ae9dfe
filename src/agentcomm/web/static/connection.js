// One WebSocket to the hub, kept alive. Registers (resuming the earlier session while this tab
// lives, so replies addressed to it are not lost across a reconnect), reconnects with jittered
// exponential backoff, and reports every change as an event:
//   "state"      detail: {state: connecting|online|reconnecting|offline, retryAt, reason}
//   "registered" detail: the REGISTER_FRONTEND_RESPONSE frame
//   "frame"      detail: any later frame from the server

const SESSION_KEY = 'agentcomm.session';
const MAX_DELAY_MS = 30_000;
const RATE_LIMIT_DELAY_MS = 10_000;
const REGISTER_WATCHDOG_MS = 15_000; // a connect that hangs this long is abandoned and retried

function loadSession() {
  try { return JSON.parse(sessionStorage.getItem(SESSION_KEY)) || {}; } catch { return {}; }
}
function saveSession(session) {
  try { sessionStorage.setItem(SESSION_KEY, JSON.stringify(session)); } catch { /* private mode */ }
}

export class Connection extends EventTarget {
  constructor({ token = null, name = 'web', userId = null } = {}) {
    super();
    this.token = token;
    this.userId = userId; // the user on an open hub (with a token, its `sub` is the user)
    this.name = name;
    this.ws = null;
    this.state = 'connecting';
    this.attempt = 0;      // consecutive failed attempts; drives the backoff
    this.retryAt = 0;      // epoch ms of the next attempt while "reconnecting"
    this.reason = '';      // why we are offline / reconnecting, in words
    this.timer = null;
    this.watchdog = null;
    this.usedResume = false;
    this.frontendId = loadSession().frontend_id || null;
  }

  get ready() { return this.state === 'online'; }

  start() {
    addEventListener('online', () => this.reconnectNow());
    this.#open();
  }

  /** Skip the backoff wait (pill click, browser back online, "Reconnect" after a refusal). */
  reconnectNow() {
    if (this.state !== 'reconnecting' && this.state !== 'offline') return;
    clearTimeout(this.timer);
    this.#open();
  }

  send(frame) {
    if (!this.ready) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  #set(state, extra = {}) {
    Object.assign(this, { state, retryAt: 0, reason: '' }, extra);
    this.dispatchEvent(new CustomEvent('state', { detail: { state, retryAt: this.retryAt, reason: this.reason } }));
  }

  #open() {
    this.#set('connecting');
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const query = this.token ? `?token=${encodeURIComponent(this.token)}` : '';
    let ws;
    try {
      ws = new WebSocket(`${scheme}://${location.host}/ws${query}`);
    } catch (err) {
      this.#scheduleRetry(0, String(err));
      return;
    }
    this.ws = ws;
    let lastError = '';
    this.watchdog = setTimeout(() => ws.close(), REGISTER_WATCHDOG_MS);

    ws.onopen = () => {
      const session = loadSession();
      const frame = { message_type: 'REGISTER_FRONTEND', frontend_name: this.name, capabilities: { stream: true, user_frames: true } };
      this.usedResume = Boolean(session.frontend_id && session.resume_token);
      if (this.usedResume) Object.assign(frame, { frontend_id: session.frontend_id, resume_token: session.resume_token });
      if (this.token) frame.token = this.token;
      else if (this.userId) frame.user_id = this.userId;
      ws.send(JSON.stringify(frame));
    };

    ws.onmessage = (ev) => {
      let frame;
      try { frame = JSON.parse(ev.data); } catch { return; }
      if (!frame || typeof frame !== 'object') return;
      if (frame.message_type === 'REGISTER_FRONTEND_RESPONSE') {
        clearTimeout(this.watchdog);
        if (frame.status && frame.status !== 'success') { lastError = frame.message || 'Registration refused'; ws.close(); return; }
        saveSession({ frontend_id: frame.frontend_id, resume_token: frame.resume_token });
        this.frontendId = frame.frontend_id;
        this.attempt = 0;
        this.#set('online');
        this.dispatchEvent(new CustomEvent('registered', { detail: frame }));
        return;
      }
      // An ERROR before registration explains the close that follows (e.g. a bad token).
      if (this.state !== 'online' && frame.message_type === 'ERROR') lastError = frame.text_payload || frame.error_code || '';
      if (this.state === 'online') this.dispatchEvent(new CustomEvent('frame', { detail: frame }));
    };

    ws.onclose = (ev) => {
      clearTimeout(this.watchdog);
      if (this.ws !== ws) return;
      this.ws = null;
      if (ev.code === 1008) {
        // Policy: most often a refused token. A stale resume token is retried once without it;
        // anything else is shown and not retried automatically, so a bad token does not hammer.
        if (this.usedResume) { saveSession({}); this.#scheduleRetry(0, 'Starting a fresh session'); return; }
        this.#set('offline', { reason: lastError || ev.reason || 'The hub refused the connection (check the access token).' });
        return;
      }
      const base = Math.min(MAX_DELAY_MS, 500 * 2 ** this.attempt);
      let delay = base / 2 + Math.random() * base / 2;
      if (ev.code === 4029) delay = Math.max(delay, RATE_LIMIT_DELAY_MS);
      this.attempt += 1;
      this.#scheduleRetry(delay, closeReason(ev.code, ev.reason || lastError));
    };
  }

  #scheduleRetry(delay, reason) {
    this.#set('reconnecting', { retryAt: Date.now() + delay, reason });
    this.timer = setTimeout(() => this.#open(), delay);
  }
}

function closeReason(code, reason) {
  const words = {
    1000: 'Connection closed',
    1001: 'The hub is going away',
    1006: 'Connection lost',
    1009: 'A message was too large',
    1011: 'The hub hit an internal error',
    1012: 'The hub is restarting',
    4008: 'The connection was too slow',
    4029: 'Too many messages — slowing down',
  }[code] || 'Connection lost';
  return reason ? `${words}: ${reason}` : words;
}
