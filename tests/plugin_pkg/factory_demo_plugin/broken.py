"""A plugin module that cannot be imported: its dependency is not installed."""

import factory_demo_plugin_missing_dependency  # noqa: F401

RECIPE = None
