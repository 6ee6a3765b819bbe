"""Data at survey scale: the shard format (shards.py) and the tool that makes it (pack.py)."""
