"""potluck.client."""
