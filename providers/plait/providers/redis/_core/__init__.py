"""What both engines stand on: connections, errors, keys, Lua loading, notifications, telemetry."""
