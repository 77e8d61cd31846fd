"""The workflow engine: provider, lifecycle, caller side, worker, one attempt, timers, scripts."""
