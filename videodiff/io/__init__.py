"""File formats: video/image writing and reading, atomic file operations, sidecars, checkpoints."""
