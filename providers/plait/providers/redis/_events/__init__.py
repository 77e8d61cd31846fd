"""The event engine: provider, caller side, worker, one delivery, scripts, codec."""
