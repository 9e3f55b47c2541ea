"""pocketrec."""
