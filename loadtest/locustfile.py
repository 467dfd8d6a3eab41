"""Locust entry point for mail load: ``locust -f loadtest/locustfile.py --target-file T.yaml``.

Example, headless, 50 submission clients for a minute::

    locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 1m --csv out \\
        --target-file target.yaml --profile submission --message-size 80%:4KB,15%:64KB,5%:1MB

``--profile`` picks the user classes (``submission``, the default,
``submissions``, ``mx``, ``pop3``, ``imap``, ``imap-idle``, ``mixed``, or a
comma list; see :mod:`loadtest.users`); user class names given on the command
line override it. (``--profile`` is Locust's own option, "a profile to group
the test runs together", which its report shows; here it also names the
traffic.)
The traffic options are in the ``mailharness`` group of ``--help`` and in
docs/load.md. Checks that would otherwise fail only once users start (the
target file, the size spec, the profile's services, enough accounts for the
workers) run at start-up and stop the run with exit code 2 and one line each.

In a distributed run the master fills in ``--worker-count`` (the workers
connected at test start) and ``--seed`` (chosen once, when not given), so each
worker takes its own share of the accounts and its own message stream. The
seed is logged at start (``mailharness load: seed N``): pass ``--seed N`` to
repeat a run's traffic. It is also recorded, with the profile and the size
spec, under ``traffic`` in the results file of ``loadtest.runinfo``.

Other parts of the load tool plug in here when present: ``loadtest.shapes``
(its ``RateShape``, the open model), ``loadtest.delivery`` and
``loadtest.scenario_task`` (their user classes, named in their ``__all__``,
and the profiles they register with :func:`loadtest.users.register_profile`).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import random
import sys
from typing import Any

from locust import LoadTestShape, User, events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtest.corpus import DEFAULT_SIZES
from loadtest.users import (
    ImapIdleUser,
    ImapRetrievalUser,
    LoadSettings,
    MxUser,
    Pop3RetrievalUser,
    SubmissionsUser,
    SubmissionUser,
    apply_profile,
    check_before_start,
    load_context,
)

__all__ = [
    "ImapIdleUser",
    "ImapRetrievalUser",
    "MxUser",
    "Pop3RetrievalUser",
    "SubmissionUser",
    "SubmissionsUser",
]

log = logging.getLogger("loadtest.locustfile")


def _plug_in(module_name: str) -> None:
    """Import ``module_name`` if it exists; its users and shapes join this locustfile."""
    if importlib.util.find_spec(module_name) is None:
        return
    module = importlib.import_module(module_name)
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name, None)
        if isinstance(obj, type) and issubclass(obj, User | LoadTestShape):
            if issubclass(obj, User) and getattr(obj, "abstract", False):
                continue
            globals()[name] = obj


_plug_in("loadtest.shapes")
_plug_in("loadtest.delivery")
_plug_in("loadtest.scenario_task")


def _traffic(environment: Environment) -> dict[str, Any] | None:
    """What to repeat this run's traffic with, for the run's results file."""
    options = environment.parsed_options
    if options is None:
        return None
    settings = LoadSettings.from_options(options)
    return {
        "seed": options.seed,
        "profile": settings.profile,
        "message_size": settings.message_size,
        "messages_per_connection": settings.messages_per_connection,
        "recipients": settings.recipients,
        "events": settings.events,
    }


if importlib.util.find_spec("loadtest.runinfo") is not None:
    _runinfo = importlib.import_module("loadtest.runinfo")
    if hasattr(_runinfo, "provide"):
        _runinfo.provide("traffic", _traffic)


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("mailharness (loadtest/users.py; docs/load.md)")
    group.add_argument(
        "--target-file", default=None, help="Target file: services, TLS, accounts (docs/targets.md)"
    )
    group.add_argument(
        "--accounts-csv",
        default=None,
        help="Accounts from a CSV (username,password,address) instead of the target file.",
    )
    group.add_argument(
        "--worker-count",
        type=int,
        default=0,
        help="Workers sharing the accounts (default: filled in by the master).",
    )
    group.add_argument(
        "--seed", type=int, default=0, help="Seed of the message generator (default: random)."
    )
    group.add_argument(
        "--message-size",
        default=DEFAULT_SIZES,
        help="A size (4096, 4KB) or weighted sizes (80%%:4KB,15%%:64KB,5%%:1MB).",
    )
    group.add_argument(
        "--attachment-threshold",
        default="32KB",
        help="Messages at least this big are multipart with an attachment.",
    )
    group.add_argument(
        "--messages-per-connection", type=int, default=1, help="SMTP messages per connection."
    )
    group.add_argument("--recipients", type=int, default=1, help="Recipients per message.")
    group.add_argument(
        "--no-pipelining",
        action="store_true",
        default=False,
        help="Do not pipeline MAIL/RCPT/DATA even if the server offers PIPELINING.",
    )
    group.add_argument(
        "--events",
        default="per-step",
        choices=["per-step", "per-message"],
        help="SMTP requests: one per protocol step (MAIL, RCPT, DATA), or one "
        "'SMTP message' per transaction (cheaper for the load generator).",
    )
    group.add_argument(
        "--auth-mechanism",
        default="auto",
        choices=["auto", "PLAIN", "LOGIN", "plain", "login"],
        help="SASL mechanism for SMTP AUTH (auto: PLAIN if offered, else LOGIN).",
    )
    group.add_argument(
        "--sender-domain",
        default=LoadSettings.sender_domain,
        help="Domain of MX senders (mail from outside).",
    )
    group.add_argument(
        "--helo-name", default=LoadSettings.helo_name, help="The name sent with EHLO."
    )
    group.add_argument(
        "--fetch-count", type=int, default=5, help="Messages POP3/IMAP users read per visit."
    )
    group.add_argument(
        "--keep-messages",
        action="store_true",
        default=False,
        help="POP3/IMAP users do not delete what they read.",
    )
    group.add_argument(
        "--top-up",
        type=int,
        default=3,
        help="Messages put into a mailbox that has fewer than --fetch-count (0: never).",
    )
    group.add_argument(
        "--idle-time", type=float, default=60.0, help="Seconds an IDLE user holds each IDLE."
    )
    group.add_argument(
        "--think-time", type=float, default=0.0, help="Seconds a user waits between visits."
    )
    for key, default in (
        ("submission", "submission"),
        ("submissions", "submissions"),
        ("mx", "mx"),
        ("pop3", "pop3"),
        ("imap", "imap"),
    ):
        group.add_argument(
            f"--{key}-service",
            default=None,
            help=f"Target service the {key} users connect to (default: {default}).",
        )


@events.init.add_listener
def _on_init(environment: Environment, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, WorkerRunner):
        return  # a worker gets its options (and user classes by name) from the master
    settings = LoadSettings.from_options(options)
    workers = settings.worker_count or int(getattr(options, "expect_workers", 1) or 1)
    if not isinstance(environment.runner, MasterRunner):
        workers = max(settings.worker_count, 1)
    problems = check_before_start(settings, workers)
    if problems:
        for problem in problems:
            print(f"mailharness load: {problem}", file=sys.stderr)
        raise SystemExit(2)
    if not options.seed:
        options.seed = random.SystemRandom().randrange(1, 2**31)
    log.info("mailharness load: seed %d (repeat with --seed %d)", options.seed, options.seed)
    if not getattr(options, "user_classes", None):
        apply_profile(environment, settings.profile)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    options = environment.parsed_options
    if isinstance(runner, MasterRunner) and options is not None:
        if not options.worker_count:
            options.worker_count = max(runner.worker_count, 1)  # sent on with the spawn message
    elif options is not None and not isinstance(runner, MasterRunner):
        load_context(environment)  # fail (and log the seed) now rather than in every user
