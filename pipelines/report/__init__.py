"""A comparison's report: the table, accuracy against compute and seconds, class balance, and
the same over seeds. Rebuilt from JSON alone, so it loads neither torch nor Ray Train."""
