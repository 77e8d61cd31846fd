"""Operating plait: health reports, heartbeats, the health endpoint, dead letters, names."""
