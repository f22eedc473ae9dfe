"""agentcomm.broker."""
