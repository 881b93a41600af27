"""Thin adapters at the edges: Kafka in/out, Redis limits and dedupe, MongoDB repositories."""
