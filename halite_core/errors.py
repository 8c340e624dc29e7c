"""halite's exceptions: one root, so a caller can catch everything halite raises on purpose.

:class:`HaliteError` is the root. Each domain error also derives from the built-in
exception it refines (``ValueError`` for a bad option, ``PermissionError`` for a
refusal), so code that catches those keeps working. Defined here, in one place, so that
the configuration, the permissions and the runners share one :class:`ConfigError`:
``salt-run halite.*`` turns it into a clear error whichever option is wrong.
"""

from __future__ import annotations


class HaliteError(Exception):
    """Something halite refuses or cannot do; the message says what and why."""


class ConfigError(HaliteError, ValueError):
    """The ``halite:`` configuration is unusable; the message says which option and why."""
