"""Process set-up: start-up checks, the health server, logging."""
