"""potluck.verify."""
