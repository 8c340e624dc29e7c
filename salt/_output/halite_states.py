"""
Display ``salt-run halite.states`` as a table of the states failing (or changing) across
the fleet, busiest first (the runner's default; ``--out=json`` gives the data).

CLI Example:

.. code-block:: bash

    salt-run halite.states window=7d --out=halite_states
"""

try:
    from halite_core.report import shown, states_table

    HAS_HALITE = True
except ImportError:
    HAS_HALITE = False

__virtualname__ = "halite_states"


def __virtual__():
    if not HAS_HALITE:
        return False, "halite_states outputter: cannot import halite_core"
    return __virtualname__


def output(data, **kwargs):  # pylint: disable=unused-argument
    """
    Render the states as a table; any other answer (an error) as it is.
    """
    return shown(data, ("window", "states"), states_table)
