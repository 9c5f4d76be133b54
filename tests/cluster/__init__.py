"""Tests of `dancecam serve --cluster` and `dancecam host` on a Ray cluster of simulated nodes on this machine.

Ray turns a loopback address given to `ray.init` into this machine's interface address before connecting (the
address other nodes would reach it by), which would send the driver's packets off loopback. Ray reads this variable
once, when it is imported: set here, before any test module of this package imports it, it keeps 127.0.0.1. The
cluster's processes inherit it.
"""

import os

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
os.environ.update(LOOPBACK_ENV)
