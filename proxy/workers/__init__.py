"""`turnout serve --workers N`: the supervisor, each worker's role, and worker 0 speaking for all."""
