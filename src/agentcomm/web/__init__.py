"""agentcomm.web."""
