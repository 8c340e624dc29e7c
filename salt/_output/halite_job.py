"""
Display ``salt-run halite.job`` as a per-minion report, failures first (the runner's
default; ``--out=json`` gives the data).

CLI Example:

.. code-block:: bash

    salt-run halite.job 20261128115138123456 --out=halite_job
"""

try:
    from halite_core.report import job_report

    HAS_HALITE = True
except ImportError:
    HAS_HALITE = False

__virtualname__ = "halite_job"


def __virtual__():
    if not HAS_HALITE:
        return False, "halite_job outputter: cannot import halite_core"
    return __virtualname__


def output(data, **kwargs):  # pylint: disable=unused-argument
    """
    Render one job's report.
    """
    if not isinstance(data, dict) or "minion_results" not in data:
        return str(data)
    if data.get("warning"):  # nothing feeds the index: said before the answer
        return f"WARNING: {data['warning']}\n{job_report(data)}"
    return job_report(data)
