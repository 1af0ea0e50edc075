"""The worker's path from a queued submission to a stored decision."""
