"""agentcomm.core."""
