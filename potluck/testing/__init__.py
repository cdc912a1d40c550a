"""potluck.testing."""
