"""Operating plait: health reports, heartbeats, dead letters, the catalogue of names."""
