"""What a job reads: sources, ingest to checked Parquet shards, a worker's share of the rows,
a user's own Parquet for the batch jobs, Ray Data's Parquet reader, and text tokens."""
