"""Benchmarks of the hub, each beside the floor and a peer measured in the same run.

`agentcomm bench SCENARIO [--duration S] [--json]` (or `python -m agentcomm.bench` for every
option) starts everything it measures itself — server, broker and agent processes, a bare
aio-pika relay chain (the floor), AutoGen's gRPC runtime (the peer), load generators — on free
loopback ports, and stops all of it before it returns, Ctrl+C included.

Scenarios: roundtrip, roundtrip-memory, fanout, idle, presence, peer, stream, roundtrip-traced,
a2a, history, ask, all. The method and the numbers: docs/benchmarks.md.
"""
