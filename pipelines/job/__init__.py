"""One job from its file to a trained model: the driver (rounds.py), the one Ray Train run every
worker executes (engine.py), its progress on the driver, and compare."""
