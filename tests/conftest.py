pytest_plugins = ["tests.support.docker"]
