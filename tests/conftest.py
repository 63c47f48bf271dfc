"""The real services, started once per test run and shared by every room's tests."""

pytest_plugins = ["tests.services.labelstudio", "tests.services.anvil", "tests.services.postgres"]
