"""Built-in curvlab backends, registered through the ``curvlab.optimizers`` entry points.

This folder is installed under the import name ``curvlab_plugins`` (see
``pyproject.toml``) so that it never collides with another top-level
``plugins`` package.
"""
