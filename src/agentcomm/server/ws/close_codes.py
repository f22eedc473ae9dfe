"""Close codes of the frontend WebSocket (PROTOCOL §3)."""

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_LARGE = 1009
CLOSE_INTERNAL = 1011
CLOSE_RESTARTING = 1012
# The token the session was opened (or last refreshed) with expired (after ERROR unauthorized).
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_TOO_SLOW = 4008
CLOSE_RATE_LIMITED = 4029
