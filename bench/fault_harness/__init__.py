"""The fault harness behind ``bench/faults.py``: the hub's parts as processes, an engine that resends what
was not acknowledged, a rest-hook receiver that records every notification, the faults, and the checks
that what was acknowledged was processed exactly once and notified in order."""
