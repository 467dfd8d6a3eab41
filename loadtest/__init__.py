"""Load testing mail servers with Locust (docs/load.md).

- :mod:`loadtest.drivers`: blocking SMTP/POP3/IMAP clients over the sans-IO cores of
  :mod:`conformance.wire`, one timed step per command; no locust import.
- :mod:`loadtest.clients`: the drivers with each step fired as a Locust request.
- :mod:`loadtest.users`: the Locust users and ``--profile`` names.
- :mod:`loadtest.corpus`: message sizes, MIME, unique ids, seeds.
- :mod:`loadtest.accounts`: accounts from the target or a CSV, split between workers.
- ``loadtest/locustfile.py``: the entry point, ``locust -f loadtest/locustfile.py``.
- the delivery-path user, open-model shapes, capacity search, run results and
  scenario tasks: :mod:`loadtest.delivery`, :mod:`loadtest.shapes`,
  :mod:`loadtest.capacity`, :mod:`loadtest.runinfo`, :mod:`loadtest.scenario_task`.

Importing this package imports nothing of Locust or gevent; only ``clients``,
``users`` and the locustfile (and the modules built on them) do.
"""
