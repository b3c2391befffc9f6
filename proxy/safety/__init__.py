"""Safety automation: health windows, rollback triggers, canary steps, go/no-go checkpoints, hooks."""
