"""Which rows train: the strategies as policies, the pool scan, the compute budget, and the
InfoBatch and SeTa rules."""
