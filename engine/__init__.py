"""Logic shared by the stream workers (write side) and the serving API (read side).

Nothing here talks to Kafka; only ``engine.layout`` and ``engine.profile_store`` know Redis key names.
"""
