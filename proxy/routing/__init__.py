"""What decides where an operation goes: the flag file, its watcher and the pure router."""
