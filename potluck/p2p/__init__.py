"""potluck.p2p."""
