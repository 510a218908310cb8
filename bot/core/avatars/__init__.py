"""Avatars: generated (metered) or uploaded (free), checked and normalised."""
