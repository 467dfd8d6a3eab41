"""Property-based command fuzzing that shrinks every finding to a replayable scenario.

The pieces, protocol-neutral unless named after one (docs/fuzzing.md):

- :mod:`.dialogue`: what a dialogue is made of (:class:`Send`, :class:`Expectation`,
  the per-step record) and the :class:`ProtocolFuzz` plug-in interface;
- :mod:`.smtp_model` and :mod:`.smtp_strategies`: the SMTP session model (which
  answer class each command may get) and the Hypothesis strategies for command lines;
- :mod:`.oracle`: runs one dialogue over a blocking loopback socket and raises a
  :class:`~.dialogue.Finding` when an invariant breaks (hang, crash, bad reply,
  wrong reply class);
- :mod:`.retrieve`: SMTP's retrieval check, after a dialogue: a message acknowledged
  for an account of the target is in its INBOX (over IMAP), else a ``lost-message``;
- :mod:`.engine`: the Hypothesis run (seed, budget, shrinking, statistics);
- :mod:`.scenario_writer`: a shrunk finding as a scenario YAML file, de-duplicated.
"""

from conformance.fuzz.dialogue import Expectation, Finding, ProtocolFuzz, Send, StepRecord
from conformance.fuzz.engine import FuzzReport, fuzz
from conformance.fuzz.protocols import PROTOCOLS
from conformance.fuzz.scenario_writer import write_finding

__all__ = [
    "PROTOCOLS",
    "Expectation",
    "Finding",
    "FuzzReport",
    "ProtocolFuzz",
    "Send",
    "StepRecord",
    "fuzz",
    "write_finding",
]
