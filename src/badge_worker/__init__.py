"""badge-worker: consumes badge claim/issue/earn commands from Kafka and publishes one outcome each."""

__version__ = "0.1.0"
