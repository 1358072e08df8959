"""Root pytest configuration: registers the fixture modules under ``tests/support``."""

pytest_plugins: list[str] = [
]
