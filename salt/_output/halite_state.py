"""
Display ``salt-run halite.state <state_id>`` as when and where the state failed, then its
runs, newest first (the runner's default; ``--out=json`` gives the data).

CLI Example:

.. code-block:: bash

    salt-run halite.state nginx_conf --out=halite_state
"""

try:
    from halite_core.report import shown, state_report

    HAS_HALITE = True
except ImportError:
    HAS_HALITE = False

__virtualname__ = "halite_state"


def __virtual__():
    if not HAS_HALITE:
        return False, "halite_state outputter: cannot import halite_core"
    return __virtualname__


def output(data, **kwargs):  # pylint: disable=unused-argument
    """
    Render one state's history; any other answer (an error) as it is.
    """
    return shown(data, ("state_id", "runs"), state_report)
