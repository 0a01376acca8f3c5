"""What analysts import: loaders of the job's output, the tables and figures built on them.

``from flows.analysis import load_party_rates, rank_namespaces, find_incidents, …`` (the
loaders of ``flows.analysis.loaders``, the tables of ``flows.analysis.tables``, the
incident search of ``flows.analysis.incidents``); the figures are in
``flows.analysis.plots``, the static HTML report in ``flows.analysis.report``, the data
dictionary in ``flows.analysis.dictionary``.

May import ``schemas``, pandas, pyarrow and matplotlib; never ``flows.edges`` or the
dataflow. The job never imports this package.
"""

from importlib.util import find_spec

if any(find_spec(name) is None for name in ("pandas", "matplotlib", "scipy")):
    raise ImportError(
        "flows.analysis needs the analysis extra (pandas, matplotlib, scipy): "
        "pip install 'party-rates[analysis]'"
    )

from flows.analysis.demo import demo_summary
from flows.analysis.incidents import *  # noqa: F403
from flows.analysis.incidents import __all__ as _incidents
from flows.analysis.loaders import *  # noqa: F403
from flows.analysis.loaders import __all__ as _loaders
from flows.analysis.tables import *  # noqa: F403
from flows.analysis.tables import __all__ as _tables

__all__ = [*_loaders, *_tables, *_incidents, "demo_summary"]
