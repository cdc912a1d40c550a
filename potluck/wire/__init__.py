"""potluck.wire."""
