"""potluck.dashboard."""
