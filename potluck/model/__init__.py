"""potluck.model."""
