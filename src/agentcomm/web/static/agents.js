// The agents panel: one row per agent, updated in place as AGENT_STATUS_UPDATE frames arrive
// (rows are never rebuilt, so a focused Pause button keeps its focus when a delta lands),
// plus the operator actions, which go through the HTTP API.
import { h, ago } from './util.js';


export class AgentsPanel {
  constructor({ list, count, empty, api, onPick, onChange }) {
    Object.assign(this, { list, count, empty, api, onPick, onChange });
    this.agents = new Map(); // agent_id → AgentInfo
    this.rows = new Map();   // agent_id → {li, refs}
    this.dialog = new CommandDialog(api);
  }

  name(id) { return this.agents.get(id)?.agent_name || id; }

  /** Agents a message can go to, in panel order. */
  reachable() { return this.sorted().filter((a) => a.status !== 'offline'); }

  sorted() {
    // Reachable agents by name, then offline ones. Pause/resume does not move a row, so the
    // button just pressed stays under the pointer and keeps keyboard focus.
    const off = (a) => (a.status === 'offline' ? 1 : 0);
    return [...this.agents.values()].sort((a, b) => off(a) - off(b) || a.agent_name.localeCompare(b.agent_name));
  }

  apply(frame) {
    const incoming = Array.isArray(frame.agents) ? frame.agents : [];
    if (frame.is_full_update) {
      const keep = new Set(incoming.map((a) => a.agent_id));
      for (const id of this.agents.keys()) if (!keep.has(id)) this.agents.delete(id);
    }
    for (const a of incoming) {
      if (!a || !a.agent_id) continue;
      const status = a.status || (a.is_online ? 'online' : 'offline');
      this.agents.set(a.agent_id, { ...a, agent_name: a.agent_name || a.agent_id, status, capabilities: a.capabilities || {} });
    }
    this.render();
    this.onChange();
  }

  render() {
    for (const [id, row] of this.rows) if (!this.agents.has(id)) { row.li.remove(); this.rows.delete(id); }
    const ordered = this.sorted();
    ordered.forEach((agent) => this.#paint(agent));
    // Re-append only when the order changed: moving a node would drop keyboard focus.
    const want = ordered.map((a) => this.rows.get(a.agent_id).li);
    const have = [...this.list.children];
    if (want.length !== have.length || want.some((li, i) => li !== have[i])) this.list.append(...want);
    this.count.textContent = String(ordered.filter((a) => a.status !== 'offline').length);
    this.count.title = `${this.count.textContent} of ${ordered.length} reachable`;
    this.empty.hidden = ordered.length > 0;
  }

  /** Refresh the "last seen" words; called on a timer. */
  tick() {
    for (const [id, row] of this.rows) {
      const text = `seen ${ago(this.agents.get(id)?.last_seen)}`;
      if (row.refs.seen.textContent !== text) row.refs.seen.textContent = text;
    }
  }

  #paint(agent) {
    let row = this.rows.get(agent.agent_id);
    if (!row) row = this.#create(agent);
    const { li, refs } = row;
    li.dataset.status = agent.status;
    refs.name.textContent = agent.agent_name;
    refs.name.title = `${agent.agent_id} — click to message this agent`;
    const inFlight = agent.in_flight ? ` · ${agent.in_flight} in flight` : '';
    refs.status.textContent = agent.status + inFlight;
    refs.seen.textContent = `seen ${ago(agent.last_seen)}`;
    refs.seen.title = agent.last_seen || '';
    // By key, so the chips keep their places whatever order the hub lists them in.
    const entries = Object.entries(agent.capabilities).sort(([a], [b]) => a.localeCompare(b));
    const chips = entries.map(([k, v]) =>
      h('li', { class: 'chip', title: `${k}: ${v}` }, v === '' || v === 'true' ? k : `${k}: ${v}`));
    const sig = JSON.stringify(entries);
    if (refs.chips.dataset.sig !== sig) { refs.chips.replaceChildren(...chips); refs.chips.dataset.sig = sig; }
    refs.chips.hidden = chips.length === 0;
    const offline = agent.status === 'offline';
    refs.pause.hidden = agent.status === 'paused';
    refs.resume.hidden = agent.status !== 'paused';
    for (const b of [refs.pause, refs.resume, refs.command]) b.disabled = offline || b.dataset.busy === '1';
  }

  #create(agent) {
    const id = agent.agent_id;
    const refs = {
      name: h('button', { type: 'button', class: 'agent-name', 'data-testid': 'agent-name', onclick: () => this.onPick(id) }),
      status: h('span', { class: 'agent-status', 'data-testid': 'agent-status' }),
      seen: h('span', { class: 'agent-seen', 'data-testid': 'agent-last-seen' }),
      chips: h('ul', { class: 'chips', 'aria-label': 'Capabilities', 'data-testid': 'agent-capabilities' }),
      result: h('p', { class: 'agent-result', 'data-testid': 'agent-action-result', role: 'status' }),
    };
    refs.pause = h('button', { type: 'button', class: 'btn small', 'data-testid': 'agent-pause', onclick: () => this.#quick(id, 'pause', refs) }, 'Pause');
    refs.resume = h('button', { type: 'button', class: 'btn small', 'data-testid': 'agent-resume', onclick: () => this.#quick(id, 'resume', refs) }, 'Resume');
    refs.command = h('button', { type: 'button', class: 'btn small', 'data-testid': 'agent-command', onclick: () => this.dialog.open(id, this.name(id)) }, 'Command…');
    const li = h('li', { class: 'agent', 'data-testid': 'agent-row', 'data-agent-id': id },
      h('div', { class: 'agent-top' }, h('span', { class: 'dot', 'aria-hidden': 'true' }), refs.name, refs.status),
      refs.seen, refs.chips,
      h('div', { class: 'agent-actions' }, refs.pause, refs.resume, refs.command),
      refs.result);
    const row = { li, refs };
    this.rows.set(id, row);
    return row;
  }

  /** Pause / resume: the row's status changes when the agent's next presence delta arrives. */
  async #quick(id, type, refs) {
    const button = type === 'pause' ? refs.pause : refs.resume;
    button.dataset.busy = '1';
    button.disabled = true;
    refs.result.dataset.ok = '';
    refs.result.textContent = type === 'pause' ? 'Pausing…' : 'Resuming…';
    try {
      const r = await this.api.command(id, { type, content: '', parameters: {}, timeout_s: 10 });
      const done = type === 'pause' ? 'Paused' : 'Resumed';
      // An output that only repeats the word ("paused") is not shown twice.
      const more = r.output && r.output.trim().toLowerCase() !== done.toLowerCase() ? ` — ${r.output}` : '';
      refs.result.dataset.ok = r.success ? 'true' : 'false';
      refs.result.textContent = r.success ? done + more : `Failed: ${r.error_message || 'the agent refused'}`;
    } catch (err) {
      refs.result.dataset.ok = 'false';
      refs.result.textContent = `Failed: ${err.message}`;
    } finally {
      delete button.dataset.busy;
      const agent = this.agents.get(id);
      if (agent) this.#paint(agent);
      clearTimeout(refs.clear);
      refs.clear = setTimeout(() => { refs.result.textContent = ''; }, 8000);
    }
  }
}

/** The "Command…" dialog: type, content, parameters and timeout; shows the CommandResult. */
class CommandDialog {
  constructor(api) {
    this.api = api;
    this.el = document.getElementById('command-dialog');
    this.form = document.getElementById('command-form');
    this.result = document.getElementById('command-result');
    this.title = document.getElementById('command-title');
    document.getElementById('command-close').addEventListener('click', () => this.el.close());
    this.form.addEventListener('submit', (ev) => { ev.preventDefault(); this.#send(); });
  }

  open(agentId, name) {
    this.agentId = agentId;
    this.title.textContent = `Command for ${name}`;
    this.result.hidden = true;
    this.result.textContent = '';
    this.el.showModal();
    this.form.elements['command-type'].select();
  }

  async #send() {
    const f = this.form.elements;
    const parameters = {};
    for (const line of f['command-params'].value.split('\n')) {
      const at = line.indexOf('=');
      if (at > 0) parameters[line.slice(0, at).trim()] = line.slice(at + 1).trim();
    }
    const timeout = Math.max(1, Number(f['command-timeout'].value) || 10);
    const send = f['command-send'];
    send.disabled = true;
    this.result.hidden = false;
    this.result.dataset.ok = '';
    this.result.textContent = 'Waiting for the agent…';
    try {
      const r = await this.api.command(this.agentId, { type: f['command-type'].value.trim(), content: f['command-content'].value, parameters, timeout_s: timeout });
      this.result.dataset.ok = r.success ? 'true' : 'false';
      this.result.textContent = [
        r.success ? '✓ Succeeded' : '✗ Failed',
        r.output && `Output:\n${r.output}`,
        r.error_message && `Error: ${r.error_message}`,
        `exit code ${r.exit_code ?? '—'} · ${r.execution_time_ms ?? '—'} ms`,
      ].filter(Boolean).join('\n');
    } catch (err) {
      this.result.dataset.ok = 'false';
      this.result.textContent = `✗ ${err.message}`;
    } finally {
      send.disabled = false;
    }
  }
}
