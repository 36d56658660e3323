"""Stats: the annual report's figures, rebuilt from every service's events (read side only)."""
