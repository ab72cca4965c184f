"""Every calibration constant tuneplan uses, in one place, each with its source.

A constant here is either a documented library/hardware fact (cited) or a figure fitted
to named data (the data and the fit are cited). Nothing else in the package may hold a
magic number that changes an estimate.
"""

from __future__ import annotations

# ---------------------------------------------------------------- memory
# (filled in by the memory estimator commit)

# ---------------------------------------------------------------- time
# (step-time efficiency per framework profile; filled in by the plan commit)
