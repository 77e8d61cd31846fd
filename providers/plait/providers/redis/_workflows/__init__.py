"""The workflow engine: provider, caller side, worker, one attempt, timers, scripts, codec."""
