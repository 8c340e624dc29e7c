"""
Display ``salt-run halite.minion <id>`` as a table of the minion's jobs, newest first (the
runner's default; ``--out=json`` gives the data).

CLI Example:

.. code-block:: bash

    salt-run halite.minion web1 --out=halite_minion
"""

try:
    from halite_core.report import minion_table, shown

    HAS_HALITE = True
except ImportError:
    HAS_HALITE = False

__virtualname__ = "halite_minion"


def __virtual__():
    if not HAS_HALITE:
        return False, "halite_minion outputter: cannot import halite_core"
    return __virtualname__


def output(data, **kwargs):  # pylint: disable=unused-argument
    """
    Render one minion's history as a table; any other answer (an error) as it is.
    """
    return shown(data, ("minion", "jobs"), minion_table)
