"""Built-in task data and generators, loaders and exporters."""
