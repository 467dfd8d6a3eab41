import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, settings
from scripted import ScriptedServer, TestCerts, make_test_certs
from toymail import ToyMail

# Hypothesis: a loaded 2-core machine must not turn "generation was slow" into a
# failure, every failure prints the blob that reproduces it, and under CI the
# examples are derandomized so a CI run can be repeated exactly.
settings.register_profile("dev", suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def test_certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_test_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def toy() -> ToyMail:
    return ToyMail({"alice": "alice-pw", "bob": "bob-pw"})


class ToyServers:
    """The four toy services of one ToyMail, running; see :meth:`target_yaml`."""

    def __init__(
        self, toy: ToyMail, certs: TestCerts, host: str, smtp_options: dict[str, Any]
    ) -> None:
        self.toy, self.certs, self.host = toy, certs, host
        smtp = toy.smtp_handler(**smtp_options)
        self.smtp = ScriptedServer(smtp, host=host, certs=certs)
        self.submissions = ScriptedServer(smtp, host=host, tls="implicit", certs=certs)
        self.submission = ScriptedServer(
            toy.smtp_handler(**{**smtp_options, "require_auth": True}), host=host, certs=certs
        )
        self.pop3 = ScriptedServer(toy.pop3_handler(), host=host, certs=certs)
        self.imap = ScriptedServer(toy.imap_handler(), host=host, certs=certs)
        self.servers = [self.smtp, self.submissions, self.submission, self.pop3, self.imap]

    def target(self) -> dict[str, Any]:
        accounts = {
            user: {"address": f"{user}@{self.toy.domain}", "username": user, "password": pw}
            for user, pw in self.toy.accounts.items()
        }
        return {
            "host": self.host,
            "domain": self.toy.domain,
            "tls": {"verify": True, "ca_file": str(self.certs.ca_file)},
            "services": {
                "mx": {"port": self.smtp.port, "tls": "starttls"},
                "submissions": {"port": self.submissions.port, "tls": "implicit"},
                "submission": {"port": self.submission.port, "tls": "starttls"},
                "pop3": {"port": self.pop3.port, "tls": "starttls"},
                "imap": {"port": self.imap.port, "tls": "starttls"},
            },
            "accounts": accounts,
        }

    def target_yaml(self, path: Path) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.target(), sort_keys=False), encoding="utf-8")
        return path


@pytest.fixture
def toy_servers_factory(toy: ToyMail, test_certs: TestCerts) -> Iterator[Callable[..., ToyServers]]:
    """Start (more) toy service sets: ``toy_servers_factory(host="::1", ehlo_keywords=...)``.

    Keyword arguments other than ``host`` go to :meth:`ToyMail.smtp_handler`. Every set
    started is stopped at teardown (and server-side errors fail the test there).
    """
    with contextlib.ExitStack() as stack:

        def start(*, host: str = "127.0.0.1", **smtp_options: Any) -> ToyServers:
            ts = ToyServers(toy, test_certs, host, smtp_options)
            for srv in ts.servers:
                stack.enter_context(srv)
            return ts

        yield start


@pytest.fixture
def toy_servers(toy_servers_factory: Callable[..., ToyServers]) -> ToyServers:
    """smtp (plain, STARTTLS offered), submissions (implicit TLS), pop3, imap on 127.0.0.1."""
    return toy_servers_factory()
