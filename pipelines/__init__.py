"""The round engine: config, sources, models, Ray Train rounds, strategies, driver, reports, CLI."""
