// The calls an agent made to other agents while answering (the final REPLY's metadata.calls),
// shown collapsed under its reply: who was asked what, and what came of it.
import { h } from './util.js';

/** The calls of a REPLY frame, when it lists any. */
export function callsOf(frame) {
  const calls = frame.metadata?.calls;
  return Array.isArray(calls) && calls.length ? calls : undefined;
}

/** Puts (or refreshes) the collapsed list of `calls` at the end of a reply's body. */
export function paintInnerCalls(replyEl, calls) {
  const body = replyEl.querySelector('.reply-body');
  body.querySelector('.inner-calls')?.remove();
  if (!calls) return;
  const count = `${calls.length} inner call${calls.length === 1 ? '' : 's'}`;
  body.append(h('details', { class: 'inner-calls', 'data-testid': 'inner-calls' },
    h('summary', {}, count),
    h('ul', {}, calls.map(innerCall))));
}

function innerCall(call) {
  const answered = call.outcome === 'answered';
  return h('li', { class: 'inner-call', 'data-testid': 'inner-call', 'data-outcome': String(call.outcome) },
    h('span', { class: 'inner-agent' }, String(call.agent_id || 'an agent')),
    h('span', { class: 'inner-text' }, ` ← ${String(call.text ?? '')}`),
    h('span', { class: 'inner-answer' }, answered ? ` → ${String(call.answer ?? '')}` : ` ✕ ${String(call.outcome)}`),
    h('span', { class: 'inner-ms' }, ` (${Number(call.ms) || 0} ms)`));
}
