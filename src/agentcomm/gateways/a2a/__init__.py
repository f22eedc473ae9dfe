"""The Agent2Agent protocol (A2A) on the hub: every hub agent answers A2A at
`/a2a/{agent_id}` (inbound, `routes.py`), and `agentcomm a2a-bridge` puts an outside A2A agent
on the hub (outbound, `bridge.py`). The protocol types, JSON-RPC and SSE are a2a-sdk's; this
package holds only the mapping (docs/a2a.md)."""
