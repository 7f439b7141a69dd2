"""Results: the record model and its append-only store, the run manifest, the leaderboard."""
