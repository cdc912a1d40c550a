"""potluck.ledger."""
