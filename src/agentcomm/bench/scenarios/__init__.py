"""One module per scenario; each `run(context)` returns the scenario's JSON object."""
