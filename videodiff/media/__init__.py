"""Media files: writing videos and PNG folders (with sidecars), reading clips, atomic writes. No torch."""
