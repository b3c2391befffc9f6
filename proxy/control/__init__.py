"""Client-side orchestration of a running proxy through its admin API: finding it, cutover, rollback."""
