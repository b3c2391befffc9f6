"""Spans and the hot-path metrics recorder, used by every plane that serves a call."""
