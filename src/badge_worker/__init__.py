"""badge-worker: consumes badge claim/issue/earn commands from Kafka and publishes one outcome each."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("badge-worker")  # the installed distribution's, from pyproject.toml
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"
