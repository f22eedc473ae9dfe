"""agentcomm.server."""
