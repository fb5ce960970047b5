"""The demo ``mscc run --demo`` plays: the story (``story.py``) of fictional referrals from two trusts,
sent over MLLP and the FHIR API (``traffic.py``, content in ``messages.py``), to a loopback receiver
standing in for the trusts' Acute Oncology systems (``receiver.py``), ending with a summary
(``summary.py``)."""

from .story import demo_settings, run_demo

__all__ = ["demo_settings", "run_demo"]
