"""The data plane: what executes a routing Decision on the two backends, shadow calls, write order and pause."""
