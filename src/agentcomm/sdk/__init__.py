"""agentcomm.sdk."""
