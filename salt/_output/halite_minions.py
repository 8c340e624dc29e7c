"""
Display ``salt-run halite.minions`` as a table, failing minions first (the runner's
default; ``--out=json`` gives the data).

CLI Example:

.. code-block:: bash

    salt-run halite.minions --out=halite_minions
"""

try:
    from halite_core.report import minions_table, shown

    HAS_HALITE = True
except ImportError:
    HAS_HALITE = False

__virtualname__ = "halite_minions"


def __virtual__():
    if not HAS_HALITE:
        return False, "halite_minions outputter: cannot import halite_core"
    return __virtualname__


def output(data, **kwargs):  # pylint: disable=unused-argument
    """
    Render the minions as a table; any other answer (an error) as it is.
    """
    return shown(data, ("minions",), minions_table)
