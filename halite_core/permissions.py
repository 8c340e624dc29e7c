"""Who may do what: roles and users from the master config, deny by default.

A permission is ``verb:kind:pattern``, for example ``view:job:test.*`` (view jobs of
functions matching ``test.*``), ``kill:job:*``, ``run:job:state.*`` (run jobs of
``state.*`` functions again, with ``halite.rerun``) or ``view:audit:*``. Each part is a shell
glob with ``*`` and ``?``, case-sensitive; ``verb:*`` stands for ``verb:*:*`` and ``*`` for
everything. Built-in roles::

    viewer:   view:job:*
    operator: view:job:*, kill:job:*
    admin:    *

Configuration (master config)::

    halite:
      roles:
        auditor: ["view:job:*", "view:audit:*"]
      users:
        alice: [operator]
        sudo_bob: [viewer]

A user is the name Salt hands to runners, matched exactly. A user with no role gets
nothing. The user the master runs as (the master's ``user`` option) is ``admin`` unless
``users`` names it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# ConfigError is defined once, in errors.py, and named here too: the runners and the web
# server catch it from this module, and it is the same class config.py raises.
from halite_core.errors import ConfigError, HaliteError

BUILTIN_ROLES: dict[str, tuple[str, ...]] = {
    "viewer": ("view:job:*",),
    "operator": ("view:job:*", "kill:job:*"),
    "admin": ("*",),
}
VERBS = ("view", "kill", "run")
KINDS = ("job", "audit")

__all__ = ["ConfigError", "Denied", "Grants", "Permission", "Policy", "policy_from_opts"]


class Denied(HaliteError, PermissionError):
    """The user lacks a permission; ``needed`` names it (``kill:job:test.sleep``)."""

    def __init__(self, user: str | None, needed: str) -> None:
        self.user = user
        self.needed = needed
        who = repr(user) if user else "an unknown user"
        super().__init__(f"permission denied: {who} lacks {needed}")


@dataclass(frozen=True)
class Permission:
    verb: str
    kind: str
    pattern: str

    @classmethod
    def parse(cls, text: object, where: str) -> Permission:
        if not isinstance(text, str) or not text:
            raise ConfigError(f"{where}: a permission must be text like 'view:job:*', not {text!r}")
        if "[" in text or "]" in text:
            raise ConfigError(f"{where}: {text!r}: only the * and ? wildcards are supported")
        parts = text.split(":", 2)
        if parts == ["*"]:
            return cls("*", "*", "*")
        if len(parts) == 2 and parts[1] == "*":
            parts = [parts[0], "*", "*"]
        if len(parts) != 3 or not all(parts):
            raise ConfigError(
                f"{where}: {text!r} is not verb:kind:pattern (e.g. view:job:*, kill:job:test.*,"
                " view:audit:*)"
            )
        # A typo (veiw:job:*, view:jobs:*) would grant nothing, silently: refuse it.
        for part, known, what in ((parts[0], VERBS, "verb"), (parts[1], KINDS, "kind")):
            if part != "*" and not any(fnmatch.fnmatchcase(k, part) for k in known):
                raise ConfigError(
                    f"{where}: {text!r}: unknown {what} {part!r} (one of {', '.join(known)})"
                )
        return cls(*parts)

    def grants(self, verb: str, kind: str, name: str) -> bool:
        return (
            fnmatch.fnmatchcase(verb, self.verb)
            and fnmatch.fnmatchcase(kind, self.kind)
            and fnmatch.fnmatchcase(name, self.pattern)
        )

    def __str__(self) -> str:
        return f"{self.verb}:{self.kind}:{self.pattern}"


@dataclass(frozen=True)
class Policy:
    """Roles and users, validated; :meth:`for_user` gives one user's grants."""

    roles: Mapping[str, tuple[Permission, ...]]
    users: Mapping[str, tuple[str, ...]]
    master_user: str | None = None

    @classmethod
    def from_config(
        cls, roles: object = None, users: object = None, master_user: str | None = None
    ) -> Policy:
        if roles is None:
            roles = {}
        if users is None:
            users = {}
        if not isinstance(roles, Mapping):
            raise ConfigError(f"halite:roles must map role: [permissions], not {roles!r}")
        if not isinstance(users, Mapping):
            raise ConfigError(f"halite:users must be a mapping of user: [roles], not {users!r}")
        parsed: dict[str, tuple[Permission, ...]] = {
            name: tuple(Permission.parse(p, f"built-in role {name}") for p in perms)
            for name, perms in BUILTIN_ROLES.items()
        }
        for name, perms in roles.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"halite:roles: a role name must be text, not {name!r}")
            if isinstance(perms, str) or not isinstance(perms, (list, tuple)):
                raise ConfigError(f"halite:roles:{name} must be a list of permissions")
            parsed[name] = tuple(Permission.parse(p, f"halite:roles:{name}") for p in perms)
        members: dict[str, tuple[str, ...]] = {}
        for user, names in users.items():
            if not isinstance(user, str) or not user:
                # YAML reads 0700 as 448 and yes as True: a str() would name someone else.
                raise ConfigError(
                    f"halite:users: a user name must be text, not {user!r} (quote it in YAML)"
                )
            if isinstance(names, str):
                names = [names]
            if not isinstance(names, (list, tuple)):
                raise ConfigError(f"halite:users:{user} must be a list of roles, not {names!r}")
            for role in names:
                if role not in parsed:
                    known = ", ".join(sorted(parsed))
                    raise ConfigError(f"halite:users:{user}: unknown role {role!r} ({known})")
            members[user] = tuple(names)
        return cls(parsed, members, master_user)

    def for_user(self, user: object) -> Grants:
        name = user if isinstance(user, str) and user else None
        if name is None:
            return Grants(None, ())
        if name in self.users:
            roles = self.users[name]
        elif self.master_user and name == self.master_user:
            roles = ("admin",)
        else:
            roles = ()
        return Grants(name, tuple(p for role in roles for p in self.roles[role]), roles)


@dataclass(frozen=True)
class Grants:
    """One user's permissions."""

    user: str | None
    permissions: tuple[Permission, ...]
    roles: tuple[str, ...] = field(default=())

    def allows(self, verb: str, kind: str, name: str) -> bool:
        return any(p.grants(verb, kind, name) for p in self.permissions)

    def job_scope(self, verb: str = "view") -> tuple[str, ...] | None:
        """The function globs of the jobs this user may ``verb``: ``None`` for all of them,
        ``()`` for none. Listings apply it in SQL."""
        patterns = []
        for p in self.permissions:
            if fnmatch.fnmatchcase(verb, p.verb) and fnmatch.fnmatchcase("job", p.kind):
                if p.pattern == "*":
                    return None
                patterns.append(p.pattern)
        return tuple(dict.fromkeys(patterns))

    def may_any(self, verb: str, kind: str) -> bool:
        """Whether any ``verb:kind:...`` is granted at all (e.g. to show a Kill button)."""
        return any(
            fnmatch.fnmatchcase(verb, p.verb) and fnmatch.fnmatchcase(kind, p.kind)
            for p in self.permissions
        )


def policy_from_opts(opts: Mapping[str, Any]) -> Policy:
    """The policy of a master config: ``halite:roles``, ``halite:users`` and the master's
    own ``user`` (default ``root``)."""
    section = opts.get("halite") or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"halite: must be a mapping, not {section!r}")
    return Policy.from_config(
        section.get("roles"), section.get("users"), master_user=str(opts.get("user") or "root")
    )
