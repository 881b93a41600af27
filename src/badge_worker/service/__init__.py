"""The service layer: a batch of Kafka records in, one outcome each out."""
