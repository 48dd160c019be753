"""The round's domain: config and presets, result records, stages and statistics (no Dagster)."""
