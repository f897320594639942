"""Online collaborative signals learned in the stream and used as ranking features.

* :class:`CoVisitation`: item-to-item co-visitation with top-K neighbours per item and a bounded
  recent history per visitor ("people who engaged with X engage with Y");
* :class:`Popularity`: (decayed) popularity, the baseline and the cold-start fallback.

Both follow River's conventions (``learn_one``, and ``CoVisitation.learn_many`` for a batch; scoring returns
``{item: score}``) and add numpy
``score_array`` variants for ranking whole catalogues quickly.
"""

from engine.recommend.covisit import CoVisitation
from engine.recommend.popularity import Popularity

__all__ = ["CoVisitation", "Popularity"]
