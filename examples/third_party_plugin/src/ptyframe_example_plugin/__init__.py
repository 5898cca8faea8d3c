"""Example third-party ptyframe plugin.

ptyframe finds this module through the entry point ``example`` of group ``ptyframe`` (see
``pyproject.toml``) and calls the hook below. Import the component modules inside the hook,
not at module level, so that listing plugins stays cheap and one broken component module
cannot break ``import ptyframe_example_plugin``.
"""

from ptyframe.registry.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def ptyframe_register_components() -> list[type]:
    """The component classes this plugin provides."""
    from .huber import HuberSqrt

    return [HuberSqrt]
