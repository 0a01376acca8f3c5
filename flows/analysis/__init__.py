"""What analysts import: loaders of the job's output, the tables and figures built on them.

``from flows.analysis import load_party_rates, rank_namespaces, …`` (the loaders and helpers
of ``flows.analysis.loaders``); the figures are in ``flows.analysis.plots``, the static HTML
report in ``flows.analysis.report``, the data dictionary in ``flows.analysis.dictionary``.

May import ``schemas``, pandas, pyarrow and matplotlib; never ``flows.edges`` or the
dataflow. The job never imports this package.
"""

from flows.analysis.loaders import *  # noqa: F403
from flows.analysis.loaders import __all__  # noqa: F401
