"""One operator over a user's Parquet as a command: norms, cluster, select, score, augment,
mixup, smote, dedup, feedback and generate."""
