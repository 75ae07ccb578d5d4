"""Dynamic structured pruning: plans, probes, scores, the pruned forward and its handle."""
