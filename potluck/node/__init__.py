"""potluck.node."""
