"""
Display ``salt-run halite.jobs`` as a table (the runner's default; ``--out=json`` gives the
data).

CLI Example:

.. code-block:: bash

    salt-run halite.jobs --out=halite_jobs
"""

try:
    from halite_core.report import jobs_table

    HAS_HALITE = True
except ImportError:
    HAS_HALITE = False

__virtualname__ = "halite_jobs"


def __virtual__():
    if not HAS_HALITE:
        return False, "halite_jobs outputter: cannot import halite_core"
    return __virtualname__


def output(data, **kwargs):  # pylint: disable=unused-argument
    """
    Render the listing as a table.
    """
    if not isinstance(data, dict) or "jobs" not in data:
        return str(data)
    if data.get("warning"):  # nothing feeds the index: said before the answer
        return f"WARNING: {data['warning']}\n{jobs_table(data)}"
    return jobs_table(data)
