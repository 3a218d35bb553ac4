"""What a running :class:`~seven_segments.testing.LocalServer` may be told to change, each checked
when it is set: its latency, campaigns, analyses, export users and accepted company tokens."""

from __future__ import annotations

from typing import Any, Collection, Dict, FrozenSet, Mapping, Optional

from . import analyses as _analyses
from .campaigns import Campaign, Source, in_file, load_campaigns, load_mapping
from .wire import JSONDict, constant_time_equal

__all__ = ["Settings", "check_latency"]


def check_latency(seconds: Any) -> float:
    """``seconds`` as a float if it is a finite number from 0 to 60, else ``ValueError`` naming it."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 60:
        raise ValueError(f"latency must be a number of seconds from 0 to 60, not {seconds!r}")
    return float(seconds)


class Settings:
    """The server's changeable settings (see ``LocalServer``'s properties of the same names)."""

    def __init__(
        self,
        latency: float,
        campaigns: Source,
        analyses: Source,
        users: Optional[Mapping[str, str]],
        tokens: Optional[Collection[str]],
    ) -> None:
        self._latency = 0.0
        self.latency = latency
        self.campaigns = campaigns  # checked and loaded by the setters
        self.analyses = analyses
        self.users = users
        self.tokens = tokens

    @property
    def latency(self) -> float:
        """Seconds every API answer waits (``0``: none)."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._latency = check_latency(seconds)

    @property
    def campaigns(self) -> Dict[str, Campaign]:
        """HTML campaigns by name, from a mapping or a JSON file path."""
        return self._campaigns

    @campaigns.setter
    def campaigns(self, source: Source) -> None:
        self._campaigns = load_campaigns(source)

    @property
    def analyses(self) -> Dict[str, JSONDict]:
        """Export API analyses by id, from a mapping or a JSON file path."""
        return self._analyses

    @analyses.setter
    def analyses(self, source: Source) -> None:
        definitions = load_mapping(source, "analyses")
        try:
            self._analyses = _analyses.load_analyses(definitions)
        except ValueError as error:
            raise in_file(source, "analyses", error) from None

    @property
    def users(self) -> Optional[Dict[str, str]]:
        """Export API users, name -> password (``None``: any non-empty name with any password)."""
        return self._users

    @users.setter
    def users(self, users: Optional[Mapping[str, str]]) -> None:
        if users is None:
            self._users: Optional[Dict[str, str]] = None
            return
        if not isinstance(users, Mapping):
            raise ValueError(f"users must be a mapping of user name to password, not {type(users).__name__}")
        for name, password in users.items():
            if not isinstance(name, str) or not name or ":" in name:
                raise ValueError(f"user name {name!r} must be a non-empty string without ':'")
            if not isinstance(password, str):
                raise ValueError(f"the password of user {name!r} must be a string")  # the value is not shown
        self._users = dict(users)

    @property
    def tokens(self) -> Optional[FrozenSet[str]]:
        """Accepted company tokens (``None``: any non-empty token)."""
        return self._tokens

    @tokens.setter
    def tokens(self, tokens: Optional[Collection[str]]) -> None:
        if tokens is None:
            self._tokens: Optional[FrozenSet[str]] = None
            return
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Collection):
            kind = type(tokens).__name__
            raise ValueError(f"tokens must be a collection of company tokens (a list or set), not {kind}")
        if not all(isinstance(token, str) and token for token in tokens):
            raise ValueError("tokens must all be non-empty strings")  # tokens are secrets: none is shown
        self._tokens = frozenset(tokens)

    def token_ok(self, token: str) -> bool:
        """Whether ``token`` is an accepted company token."""
        return self._tokens is None or token in self._tokens

    def user_ok(self, name: str, password: str) -> bool:
        """Whether ``name`` and ``password`` are those of an export API user."""
        if self._users is None:
            return bool(name)
        expected = self._users.get(name)
        return expected is not None and constant_time_equal(expected, password)

    def __repr__(self) -> str:
        users = None if self._users is None else sorted(self._users)  # names only: passwords are secrets
        tokens = None if self._tokens is None else len(self._tokens)  # how many: tokens are secrets
        return f"<Settings latency={self._latency} users={users} tokens={tokens}>"
