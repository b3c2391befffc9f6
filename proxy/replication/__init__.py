"""The durable replication queue that brings every write to the other backend, and its replayer."""
