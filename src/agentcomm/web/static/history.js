// The user's conversations as the hub keeps them (docs/history.md): who this browser's user
// is, and the conversations (with their messages) that this tab does not have yet — after a
// reload in a new tab, or what another tab or device of the same user said.

const USER_KEY = 'agentcomm.user';
const MAX_CONVERSATIONS = 50;
const PAGE = 500;

/** This browser's user on an open hub (kept in local storage, so every tab shares it). */
export function userId() {
  try {
    let id = localStorage.getItem(USER_KEY);
    if (!id) {
      id = `user_${crypto.getRandomValues(new Uint32Array(4)).reduce((s, n) => s + n.toString(16).padStart(8, '0'), '')}`;
      localStorage.setItem(USER_KEY, id);
    }
    return id;
  } catch { return null; } // storage refused: a user of its own, as the hub then decides
}

async function getJson(path, token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const res = await fetch(path, { headers });
  if (!res.ok) return null; // history off (404), down (503), or not ours: the tab's own copy stands
  return res.json();
}

/**
 * The conversations of the user the tab does not know (`known(id)` false), each as
 * {id, title, items} with items shaped as the page keeps them, oldest first.
 */
export async function missingConversations({ token, user, known }) {
  const who = token ? '' : `&user_id=${encodeURIComponent(user || '')}`;
  const listed = await getJson(`/api/conversations?limit=${MAX_CONVERSATIONS}${who}`, token);
  if (!listed) return [];
  const found = [];
  for (const c of listed.conversations) {
    if (known(c.conversation_id)) continue;
    const messages = [];
    let after = c.first_seq - 1;
    while (after < c.last_seq) {
      const page = await getJson(`/api/conversations/${encodeURIComponent(c.conversation_id)}/messages?after=${after}&limit=${PAGE}${who}`, token);
      if (!page || !page.messages.length) break;
      messages.push(...page.messages);
      after = page.messages[page.messages.length - 1].seq;
    }
    found.push({ id: c.conversation_id, items: itemsOf(c.conversation_id, messages) });
  }
  return found;
}

function itemsOf(convId, messages) {
  const items = new Map();
  for (const m of messages) {
    const at = Date.parse(m.timestamp) || Date.now();
    if (m.message_type === 'TEXT') {
      const state = { answered: 'answered', failed: 'error' }[m.status] || 'delivered';
      // foreign: sent by another session of the user, never sent again from this tab.
      items.set(m.message_id, { kind: 'user', id: m.message_id, conv: convId, text: m.text_payload, receiver: m.receiver_id || '', routedTo: m.receiver_id || '', state, at, queuedAt: at, replies: [], notes: [], foreign: true });
      continue;
    }
    const parent = items.get(m.in_reply_to_message_id);
    if (!parent) continue;
    if (m.message_type === 'ERROR') {
      Object.assign(parent, { state: 'error', error: m.text_payload, errorCode: m.error_code || '' });
    } else {
      parent.replies.push({ id: m.message_id, sender: m.sender_id, text: m.text_payload, chunks: [], streaming: false, at });
    }
  }
  return [...items.values()];
}
