"""potluck.scheduler."""
